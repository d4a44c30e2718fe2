"""Serve Whisper models over HTTP with OpenAI's audio API (any OpenAI client works unchanged).

    python infer_server.py --model_path=models/whisper-tiny-finetune-ct2 --backend=ct2 --host=127.0.0.1 --port=8000
    python infer_server.py --model_path=openai/whisper-base --model_path=models/whisper-base-finetune

Endpoints: POST /v1/audio/transcriptions and /v1/audio/translations (multipart ``file``, ``model``, ``language``,
``prompt``, ``response_format`` json|text|srt|vtt|verbose_json, ``temperature``, ``timestamp_granularities[]``),
GET /v1/models[/ID], GET /health. A model is named by its folder name (or hub id); ``whisper-1`` means the first one.
Each model decodes one request at a time, in arrival order; at most --max_queue requests wait (then 503).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading

from utils.cli import (CT2_BEAM_SIZE, add_bool, add_engine_args, add_to_simple_arg, check_device_arg, default_beam_size,
                       finite_float, make_parser, optional_str, resolve_backend, setup_logging)

logger = logging.getLogger("infer_server")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__.split("\n")[0])
    g = p.add_argument_group("models")
    g.add_argument("--model_path", type=str, action="append", default=None,
                   help="merged model folder, hub id or offline-packaged model; repeat to serve several "
                        "(default openai/whisper-base)")
    add_bool(g, "local_files_only", False, "never contact the model hub")
    g.add_argument("--device", type=str, default="auto", help="auto (cuda → mps → cpu), cpu, cuda, cuda:1, mps")
    add_engine_args(g, ct2_encoder_auto="torch with AMX (a server loads PyTorch once for all its requests; not with "
                                        "--compute_type=float32), onnx "
                                        "with VNNI (AVX-512-VNNI/AVX-VNNI), else ct2")
    g.add_argument("--cpu_threads", type=int, default=0,
                   help="ct2 CPU threads in all (0 = CTranslate2's default: 4, or the cores if fewer), split between "
                        "two workers that decode halves of a batch side by side")
    g.add_argument("--batch_size", type=int, default=8, help="30 s chunks of one request decoded at once")
    s = p.add_argument_group("server")
    s.add_argument("--host", type=str, default="127.0.0.1", help="address to listen on (0.0.0.0 = all)")
    s.add_argument("--port", type=int, default=8000, help="TCP port")
    s.add_argument("--api_key", type=optional_str, default=None,
                   help="require 'Authorization: Bearer <key>' on /v1/* (default: no key)")
    s.add_argument("--max_upload_mb", type=finite_float, default=25.0, help="largest accepted upload (413 above)")
    s.add_argument("--max_audio_minutes", type=finite_float, default=120.0,
                   help="longest accepted audio (413 above), checked while decoding: a small compressed file can "
                        "hold hours, whose samples take the server's memory (0 = no limit)")
    s.add_argument("--max_queue", type=int, default=16, help="requests that may wait per model (503 above)")
    s.add_argument("--request_timeout", type=finite_float, default=300.0,
                   help="seconds a request may wait and decode (504 after)")
    d = p.add_argument_group("decoding defaults (a request's fields override them)")
    d.add_argument("--language", type=optional_str, default=None,
                   help="language when a request gives none: None = the language the model was fine-tuned on, "
                        "else detected; auto = always detected (a request may also send language=auto)")
    d.add_argument("--hotwords", type=optional_str, default=None,
                   help='words to steer every request towards, e.g. "张三,Kubernetes"')
    d.add_argument("--beam_size", type=int, default=None,
                   help=f"beam width (1 = greedy); default {CT2_BEAM_SIZE} with --backend=ct2, 1 with transformers, "
                        "as infer.py")
    add_to_simple_arg(d)
    add_bool(d, "remove_pun", False, "remove punctuation from the output")
    add_bool(p, "verbose", False, "debug logging")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.model_path = args.model_path or ["openai/whisper-base"]
    backends = {m: resolve_backend(args.backend, [m]) for m in args.model_path}
    if len(set(backends.values())) > 1:  # one backend a server (its decoding defaults depend on it)
        parser.error("--backend=auto: " + "; ".join(f"{m} runs on {b}" for m, b in backends.items()) + ": a "
                     "server runs one backend; give --backend=ct2 with CTranslate2 folders (or packaged names such "
                     "as openai/whisper-base), or serve the two kinds from two servers")
    args.backend = backends[args.model_path[0]]
    check_device_arg(parser, args.device, args.backend)
    for name, value, ok, text in (("--port", args.port, 0 < args.port < 65536, "in 1..65535"),
                                  ("--max_upload_mb", args.max_upload_mb, args.max_upload_mb > 0, "> 0"),
                                  ("--max_audio_minutes", args.max_audio_minutes, args.max_audio_minutes >= 0,
                                   ">= 0"),
                                  ("--max_queue", args.max_queue, args.max_queue >= 1, ">= 1"),
                                  ("--request_timeout", args.request_timeout, args.request_timeout > 0, "> 0"),
                                  ("--batch_size", args.batch_size, args.batch_size >= 1, ">= 1"),
                                  ("--beam_size", args.beam_size, args.beam_size is None or args.beam_size >= 1,
                                   ">= 1")):
        if not ok:
            parser.error(f"{name}={value}: must be {text}")
    names = [model_name(m) for m in args.model_path]
    if len(set(names)) != len(names):
        parser.error(f"--model_path: two models would have the same name ({', '.join(names)}); serve folders "
                     "with different names")
    problem = port_problem(args.host, args.port)
    if problem:
        parser.error(problem)
    if args.language is not None:
        from utils.languages import decode_language

        try:
            decode_language(args.language)
        except ValueError as e:
            parser.error(f"--language: {e}")
    return args


def model_name(model_path: str) -> str:
    """The id a served model answers to: a local folder's name, else the hub id as given."""
    path = model_path.rstrip("/\\")
    return os.path.basename(path) if os.path.isdir(path) else path


def port_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port (checked before any model loads), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"--host={host}: not an address of this machine ({e})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as e:
            return f"--host={host} --port={port}: cannot listen there ({e.strerror}); choose another --port"
    return None


def load_models(args: argparse.Namespace) -> dict:
    """{name: Transcriber} for every --model_path."""
    from utils.transcribe import load_transcriber

    models = {}
    for path in args.model_path:
        logger.info("loading %s (%s backend)", path, args.backend)
        engine = load_transcriber(
            path, args.backend, device=args.device, dtype=args.dtype, compute_type=args.compute_type,
            local_files_only=args.local_files_only, cpu_threads=args.cpu_threads, ct2_encoder=args.ct2_encoder)
        engine.tune_lone_decoder()  # a request is mostly a short file: a window alone
        models[model_name(path)] = engine
    return models


def server_options(args: argparse.Namespace):
    from utils.server import ServerOptions
    from utils.transcribe import DecodeOptions

    beam = args.beam_size if args.beam_size is not None else default_beam_size(args.backend)
    decode = DecodeOptions(language=args.language, hotwords=args.hotwords, batch_size=args.batch_size, beam_size=beam,
                           to_simple=args.to_simple, remove_pun=args.remove_pun)
    return ServerOptions(api_key=args.api_key, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                         max_audio_seconds=args.max_audio_minutes * 60 or None,
                         request_timeout=args.request_timeout, decode=decode)


def serve(args: argparse.Namespace, service) -> None:
    import uvicorn

    from utils.server import build_app

    print(f"serving {', '.join(service.workers)} at http://{args.host}:{args.port}/v1 "
          f"(POST /v1/audio/transcriptions, /v1/audio/translations; GET /v1/models[/ID], /health)", flush=True)
    config = uvicorn.Config(build_app(service), host=args.host, port=args.port,
                            log_level="info" if args.verbose else "warning")
    stopping_server_class()(config, service).run()


def stopping_server_class():
    """uvicorn's Server, stopped in steps (a class made on first use: uvicorn is imported only to serve)."""
    import uvicorn

    class StoppingServer(uvicorn.Server):
        """The first Ctrl-C (or SIGTERM) stops taking requests and lets the open ones finish, saying how many; the
        second answers them 503 at once (queued jobs dropped, the running one stopped after its batch, its result
        unwanted), so the server exits without waiting for them; a third forces the exit. Before, it waited silently
        for every open request (52 s for one 4-minute upload) and a second Ctrl-C left tracebacks and a C++ abort."""

        def __init__(self, config, service) -> None:
            super().__init__(config)
            self.service = service
            self.stops = 0

        def handle_exit(self, sig, frame) -> None:
            self.stops += 1
            if self.stops == 1:
                n = self.service.open_jobs()
                logger.warning("stopping: %s (Ctrl-C again to answer %s 503 now)",
                               f"finishing {n} open request{'s' * (n != 1)}" if n else "no open requests",
                               "them" if n != 1 else "it")
            elif self.stops == 2:
                logger.warning("stopping now: open requests answered 503 (the server is shutting down)")
                # in a thread: the handler runs on the event loop's thread, which may hold a queue's lock right now
                threading.Thread(target=self.service.cancel_all, name="cancel-all", daemon=True).start()
                return
            else:  # uvicorn forces its exit on a repeated SIGINT only: a third SIGTERM (kill) did nothing
                logger.warning("stopping at once")
                self.force_exit = True
            super().handle_exit(sig, frame)

    return StoppingServer


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    from utils.models import ModelResolutionError

    try:
        models = load_models(args)
    except (ModelResolutionError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from utils.server import TranscriptionService

    service = TranscriptionService(models, server_options(args), max_queue=args.max_queue)
    rc = 0
    try:
        serve(args, service)
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C it held back once the server has stopped
        print("stopped", file=sys.stderr)
        rc = 130
    if service.still_decoding():  # a batch the shutdown answered 503 and did not wait for: the interpreter's exit
        # around CTranslate2's running threads aborted the process ("terminate called without an active exception")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
