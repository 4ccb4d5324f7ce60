"""``emovoice-train``: run an experiment from a YAML config, or score an exported model on a corpus."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml


def _log_to(path: Path | None):
    start = time.monotonic()

    def log(msg: str) -> None:
        line = f"[{time.monotonic() - start:7.1f}s] {msg}"
        print(line, flush=True)
        if path is not None:
            with path.open("a") as f:
                f.write(line + "\n")

    return log


def cmd_run(args: argparse.Namespace) -> None:
    from training.config import load_config
    from training.run import finalize, run, run_folds

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = load_config(args.config, overrides)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    if args.folds is not None:
        log = _log_to(Path(cfg.output_dir) / f"train-folds-{'-'.join(map(str, args.folds))}.log")
        run_folds(cfg, args.folds, log)
    elif args.finalize:
        finalize(cfg, _log_to(Path(cfg.output_dir) / "finalize.log"))
    else:
        run(cfg, _log_to(Path(cfg.output_dir) / "train.log"))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from transformers import AutoConfig, AutoModelForAudioClassification

    import emovoice_daemon.scoring.models  # noqa: F401  (registers the EmoVoice model types)
    from training.config import CorpusSpec
    from training.evaluate import evaluate, headline, metrics_table
    from training.run import load

    torch.set_num_threads(args.threads)
    config = AutoConfig.from_pretrained(args.model)
    model = AutoModelForAudioClassification.from_pretrained(args.model, config=config).eval()
    data = load([CorpusSpec(args.kind, Path(args.data))], Path(args.cache_dir) if args.cache_dir else None)
    result = evaluate(model, data.store, data.labels, np.arange(len(data.utts)), float(getattr(config, "temperature", 1.0)), args.conditions, args.window)
    print(metrics_table([(f"{data.name} (all)", c, headline(result[c])) for c in args.conditions]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``emovoice-train``."""
    parser = argparse.ArgumentParser(prog="emovoice-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="speaker-fold evaluation, train the shipped model, export it")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=YAML", help="override a top-level config key")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--folds", type=int, nargs="+", help="only train/evaluate these folds (0-based; for parallel processes)")
    step.add_argument("--finalize", action="store_true", help="only summarise existing fold results, ship and export")
    p.set_defaults(func=cmd_run)
    e = sub.add_parser("evaluate", help="score an exported model directory on a whole corpus")
    e.add_argument("--model", required=True)
    e.add_argument("--kind", required=True, help="corpus loader: cremad, ravdess, tess, lego, folders, csv")
    e.add_argument("--data", required=True)
    e.add_argument("--conditions", nargs="+", default=["clean", "telephony"])
    e.add_argument("--window", type=float, default=3.0)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--cache-dir", default="/tmp/emovoice-cache")
    e.add_argument("--json", help="write the full reports here")
    e.set_defaults(func=cmd_evaluate)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
