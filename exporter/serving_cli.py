"""``reroute deploy``, ``reroute serve`` and ``reroute client``: thin wrappers over engines.serving.

Heavy imports (PyTriton, tritonclient) happen inside the commands, so
``import exporter.cli`` works without them.
"""

from __future__ import annotations

import json


def cmd_deploy(args) -> int:
    from engines.serving.deploy import write_triton_repo

    path = write_triton_repo(args.artifact, args.out, backend=args.backend, force=args.force,
                             plugins=not args.no_plugins)
    print(f"wrote Triton model repository {path}")
    if args.backend == "tensorrt" and not args.no_plugins and not (path / "plugins").is_dir():
        print("note: the plugin library was not found; set REROUTE_PLUGINS=/path/to/libreroute_plugins.so "
              "for launch.sh (build it with engines/plugins/build.sh)")
    print(f"start it with: {path}/launch.sh   (tritonserver --model-repository {path} --disable-auto-complete-config)")
    return 0


def cmd_serve(args) -> int:
    from engines.serving.triton_serve import ServeOptions, serve

    return serve(args.artifact, ServeOptions(host=args.host, port=args.port, backend=args.backend,
                                             max_batch=args.max_batch, model_name=args.model, threads=args.threads,
                                             plugins=not args.no_plugins, max_queue=args.max_queue,
                                             timeout=args.timeout, metrics_port=args.metrics_port,
                                             stats_port=args.stats_port))


def cmd_client(args) -> int:
    from engines.errors import RerouteError
    from engines.inputs import IMAGE_PLACEHOLDER
    from engines.serving.client import client_generate

    from .generation import check_max_new_tokens

    check_max_new_tokens(args.max_new_tokens)
    count = args.prompt.count(IMAGE_PLACEHOLDER)
    if count != 1:
        raise RerouteError(f"--prompt must contain exactly one {IMAGE_PLACEHOLDER} placeholder, found {count}")
    if args.timeout <= 0:
        raise RerouteError(f"--timeout must be > 0, got {args.timeout}")
    result = client_generate(args.url, args.image, args.prompt, args.max_new_tokens, args.model, args.timeout)
    print(json.dumps(result) if args.json else result["text"])
    return 0


def register(sub, parser_class) -> None:
    """Add the serving subcommands to ``reroute``'s subparsers."""
    from engines.serving.triton_serve import DEFAULT_HOST, DEFAULT_MAX_QUEUE, DEFAULT_PORT, MODEL_NAME

    p = sub.add_parser("deploy", help="write a Triton Inference Server model repository for an artifact")
    p.add_argument("artifact", help="exported artifact folder")
    p.add_argument("--triton-repo", "--out", dest="out", required=True, help="model repository folder to write")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"],
                   help="onnxruntime: model.onnx per graph; tensorrt: the engines `reroute build` wrote")
    p.add_argument("--no-plugins", action="store_true", help="tensorrt: deploy the no-plugin engines")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("serve", help="serve an artifact on Triton Inference Server (PyTriton)")
    p.add_argument("artifact", help="exported artifact folder")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: loopback)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--no-plugins", action="store_true", help="tensorrt: use the no-plugin engines")
    p.add_argument("--max-batch", type=int, help="largest batch of requests run together (default: the artifact's)")
    p.add_argument("--model", default=MODEL_NAME, help=f"Triton model name (default {MODEL_NAME})")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice)")
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                   help=f"requests that may wait; beyond it a request is refused at once with 'server busy' "
                        f"(default {DEFAULT_MAX_QUEUE})")
    p.add_argument("--timeout", type=float, help="seconds a request may take, waiting included (default: no limit)")
    p.add_argument("--metrics-port", type=int, help="Triton's Prometheus metrics port (default: --port + 2)")
    p.add_argument("--stats-port", type=int,
                   help="reroute's own metrics (queue length, batch sizes, latencies; default: metrics port + 1)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("client", help="send one image + prompt to a `reroute serve` (or Triton) server")
    p.add_argument("--url", required=True, help="server address, e.g. http://127.0.0.1:8000")
    p.add_argument("--image", required=True)
    p.add_argument("--prompt", required=True, help="used verbatim; must contain one <image>")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--model", default=MODEL_NAME,
                   help=f"model name (default {MODEL_NAME}; reroute_pipeline for a `reroute deploy` repository)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the answer (default 600)")
    p.add_argument("--json", action="store_true", help="print text and generated_token_ids as JSON")
    p.set_defaults(func=cmd_client)
