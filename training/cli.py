"""``emovoice-train``: run an experiment from a YAML config, or score an exported model on a corpus."""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from training.config import default_cache_dir
from training.splits import TooFewSpeakers


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


CALL_CORPORA = ("cremad", "ravdess", "emovo", "urdu")
MACHINE_SPEECH = ("prompts-fr", "prompts-it", "prompts-ru", "espeak")  # the shipped head: no voice the evaluation plays


def cmd_calls(args: argparse.Namespace) -> None:
    """Whole calls of held-out speakers through the daemon's production path; one table row per corpus."""
    from emovoice_daemon.judgement.policy import describe, with_model_defaults
    from emovoice_daemon.scoring.models.loader import has_features
    from training.call_eval import FeatureMemo, audio_seconds, call_metrics, line_report, misses, score_calls, table
    from training.calls import build_calls
    from training.heldout import corpus_speakers, load_call_corpus
    from training.line_conditions import IMPAIRMENTS, impaired, no_caller_calls

    if args.choose and args.speakers != "val":
        raise SystemExit("emovoice-train calls --choose: settings are chosen on validation speakers: add --speakers val")
    torch.set_num_threads(args.threads)
    config, classifier = _daemon_model(args)
    config.escalation = with_model_defaults(config.escalation, classifier.escalation)
    print(f"model {classifier.name}, adapt {config.model.adapt}, speech gate {config.pipeline.speech_gate}, "
          f"condition {args.condition}, seed {args.seed}\nescalation: {describe(config.escalation, classifier.escalation)}", flush=True)
    memo = FeatureMemo(classifier, Path(args.memo)) if args.memo and has_features(classifier.model) else None
    rows, out, started = {}, {}, time.monotonic()

    def run(name: str, calls: list) -> list:
        counted = _window_counts()
        outcomes = score_calls(calls, config, classifier)
        if memo is not None:
            memo.save()
        print(f"[{time.monotonic() - started:6.0f}s] {name}: {len(calls)} calls, {audio_seconds(calls) / 60:.0f} min of audio",
              flush=True)
        scored, second = (now - then for now, then in zip(_window_counts(), counted))
        if second:  # a cascade: how often its second model ran (every pass, the site-learning one included)
            out.setdefault("second_share_pct", {})[name] = round(100 * second / max(scored, 1), 1)
            print(f"  the cascade's second model scored {second:.0f} of {scored:.0f} windows "
                  f"({out['second_share_pct'][name]} %)", flush=True)
        return outcomes

    for spec in args.corpus:
        kind, _, path = spec.partition("=")
        utts, store = load_call_corpus(kind, Path(path or f"../shared/data/{kind}"), args.cache_dir)
        calls = build_calls(utts, [store[i] for i in range(len(utts))], corpus_speakers(kind, utts, args.speakers),
                            calls_per_kind=args.calls_per_kind, condition=args.condition, seed=args.seed)
        name = f"{kind} ({args.speakers} speakers)" if kind == "cremad" else kind
        outcomes = run(name, calls)
        rows[name] = call_metrics(outcomes)
        print(f"{name}: misses {', '.join(misses(rows[name])) or 'none'}", flush=True)
        if args.choose and kind == "cremad":  # settings are chosen on CREMA-D's validation actors only
            _choose(outcomes, config, args.choose)
        if args.line_conditions and kind == args.corpus[0].partition("=")[0]:
            ramps = [c for c in calls if c.kind == "calm_angry"]
            rows[f"{name}, calm→angry calls alone"] = call_metrics(run("calm→angry alone", ramps))  # what impairments change
            for imp in IMPAIRMENTS:
                rows[f"{name}, {imp}"] = call_metrics(run(imp, impaired(ramps, imp, args.seed)))
            calm = [c.audio[: int(c.calm_until_s * 8000)] for c in calls if c.kind == "calm"]
            line = run("no-caller calls (site taught by the corpus' callers)", calls + no_caller_calls(calm, args.seed))
            out["line"], line_md = line_report([o for o in line if o.call.kind == "line"])
            print(line_md)
    print(table(rows))
    if args.json:
        out.update(model=classifier.name, condition=args.condition, rows=rows)
        Path(args.json).write_text(json.dumps(out, indent=1))


def cmd_site_sim(args: argparse.Namespace) -> None:
    """Site learning simulated: verdicts of k calls per corpus, refit, the other speakers' whole calls (issue #26)."""
    from training.call_eval import FeatureMemo
    from training.calls import build_calls
    from training.heldout import corpus_speakers, load_call_corpus
    from training.site_sim import HEADER, HeldOut, Site, simulate, summary

    torch.set_num_threads(args.threads)
    config, classifier = _daemon_model(args)
    memo = FeatureMemo(classifier, Path(args.memo)) if args.memo else None
    site = Site(config, classifier, config.escalation)
    log = _log_to(None)
    held = HeldOut(classifier.model, args.cache_dir, log)
    lines, out = [], {}
    for spec in args.corpus:
        kind, _, path = spec.partition("=")
        utts, store = load_call_corpus(kind, Path(path or f"../shared/data/{kind}"), args.cache_dir)
        calls = build_calls(utts, [store[i] for i in range(len(utts))], corpus_speakers(kind, utts, "test"),
                            calls_per_kind=args.calls_per_kind, seed=args.seed)
        log(f"{kind}: {len(calls)} calls of {len({c.speaker for c in calls})} speakers")
        out[kind] = simulate(site, calls, held, args.splits, args.k, log)
        if memo is not None:
            memo.save()
        lines += summary(kind, out[kind])
        print(HEADER + "\n" + "\n".join(lines), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


def _head_inputs(args: argparse.Namespace, head: dict | None = None):  # noqa: ANN202 (lazy imports)
    """The whisper config's head options (``layers`` and ``chunk_s`` from an existing head's config.json ``head``),
    the machine speech asked for (checked before CREMA-D is read: a missing package stops at once), CREMA-D, its
    feature cache, the labels."""
    from training.call_head import ANGER_LABELS, UPSET_LABELS, MachineSpeech
    from training.config import load_config
    from training.corpora import CREMAD_LABELS
    from training.run import load
    from training.train_whisper import FeatureCache, HeadOptions

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, {})
    sources = getattr(args, "machine_speech", None)
    try:
        machine = MachineSpeech.build(sources, args.machine_seconds, cfg.seed) if sources else None
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        raise SystemExit(f"emovoice-train {args.command}: {exc}") from None
    opts = HeadOptions.from_dict({**cfg.model, "train_conditions": args.conditions, "head_hidden": args.hidden,
                                  **({} if getattr(args, "chunk_s", None) is None else {"chunk_s": args.chunk_s}),
                                  **({} if getattr(args, "layers", None) is None else {"layers": args.layers}),
                                  **{k: head[k] for k in ("layers", "chunk_s") if head and k in head}})
    log = _log_to(None)
    data = load(cfg.train_corpora, Path(cfg.cache_dir) if cfg.cache_dir else None)
    cache = FeatureCache(opts, Path(cfg.cache_dir or default_cache_dir()) / "features", cfg.augment, cfg.seed, log)
    labels = {"upset": UPSET_LABELS, "anger": ANGER_LABELS, "corpus": CREMAD_LABELS}[args.labels]
    return cfg, opts, data, cache, labels, log, machine


def cmd_head(args: argparse.Namespace) -> None:
    """Train the call-level encoder head on CREMA-D's training actors and export it with its replay set
    (escalation.json comes from ``emovoice-train calls --choose``)."""
    from training.call_head import Teacher, replay_windows, train_call_head
    from training.train_whisper import export

    cfg, opts, data, cache, labels, log, machine = _head_inputs(args)
    settings = dataclasses.replace(cfg.train, epochs=args.epochs)
    teacher = Teacher([Path(t) for t in args.teacher]) if args.teacher else None
    seed = cfg.seed if args.seed is None else args.seed
    head = train_call_head(data, cache, opts, labels, settings, seed, log, machine, teacher)
    card = Path(args.card).read_text() if args.card else f"# EmoVoice call-level encoder head ({args.labels} labels)\n"
    export(head, opts, Path(args.out), card)
    _write_replay(Path(args.out), replay_windows(data, cache, opts, labels), cfg.seed, log)
    log(f"exported to {args.out}")


def cmd_student(args: argparse.Namespace) -> None:
    """Distil encoder heads into a compact model (log-mel CNN) and export it (escalation.json: ``calls --choose``)."""
    from training.call_head import Teacher
    from training.compact_student import distil_compact, student_data, student_replay
    from training.config import load_config
    from training.export import save_model_dir

    cfg, _, data_set, cache, labels, log, machine = _head_inputs(args)
    compact = load_config(args.compact_config, {})
    data = student_data(data_set, cache, Teacher([Path(t) for t in args.teacher]), args.conditions, labels, cfg.augment,
                        cfg.seed, machine)
    log(f"student: {len(data.train_waves)} windows ({', '.join(args.conditions)}), {len(data.val_waves)} validation clips")
    settings = dataclasses.replace(compact.train, epochs=args.epochs, label_smoothing=0.0,
                                   class_weight_power=args.class_weight_power)
    model, temperature = distil_compact(data, compact.model, settings, cfg.seed if args.seed is None else args.seed, log)
    card = Path(args.card).read_text() if args.card else f"# EmoVoice compact student of {', '.join(args.teacher)}\n"
    save_model_dir(model, Path(args.out), temperature, do_normalize=False, card=card)
    _write_replay(Path(args.out), student_replay(model, data_set, labels, args.conditions, cfg.augment, cfg.seed),
                  cfg.seed, log)
    log(f"exported to {args.out}")


def cmd_replay(args: argparse.Namespace) -> None:
    """(Re)write an existing encoder head's or compact student's replay set from the training actors it was
    trained on (a student: in ``--conditions``)."""
    from training.call_head import replay_windows
    from training.compact_student import student_replay

    head = json.loads((Path(args.model) / "config.json").read_text())
    cfg, opts, data, cache, labels, log, _ = _head_inputs(args, head)
    if head.get("model_type") == "emovoice-compact":
        from emovoice_daemon.scoring.models.compact import CompactForAudioClassification

        model = CompactForAudioClassification.from_pretrained(args.model)
        windows = student_replay(model, data, labels, args.conditions, cfg.augment, cfg.seed)
    else:
        windows = replay_windows(data, cache, opts, labels)
    _write_replay(Path(args.model), windows, cfg.seed, log)


def _write_replay(model_dir: Path, windows: tuple, seed: int, log) -> None:  # noqa: ANN001
    """Store a model directory's replay set from its (features, labels, guard) windows."""
    from emovoice_daemon.learning.refit import write_replay

    path = write_replay(model_dir, *windows, seed=seed)
    log(f"replay set {path}: {path.stat().st_size / 1e6:.2f} MB")


def _choose(outcomes: list, config, out: str) -> None:  # noqa: ANN001
    """Pick the escalation settings on these (validation) calls and write them as the model's escalation.json."""
    from training.policy_search import BUDGET, choose

    best = choose(outcomes, config.escalation)
    if best is None:
        print(f"no setting keeps these calm calls within {BUDGET}")
        return
    values, figures = best
    Path(out).write_text(json.dumps(values, indent=1) + "\n")
    print(f"chosen (within {BUDGET}): {values}\n  -> {figures}\nwritten to {out}")


def _window_counts() -> tuple[float, float]:
    """Windows the model scored so far in this process, and of those the ones a cascade's second model scored."""
    from emovoice_daemon.outputs.metrics import REGISTRY

    return tuple(REGISTRY.get_sample_value(name, labels) or 0.0 for name, labels in (
        ("emovoice_windows_total", {"outcome": "scored"}), ("emovoice_cascade_second_windows_total", {})))


def _daemon_model(args: argparse.Namespace):  # noqa: ANN202 (Config, Classifier; imports stay lazy)
    """The daemon config (``--config``, ``--set``) and the classifier it loads, with --model/--adapt applied."""
    from emovoice_daemon.config import ConfigError, load_config as load_daemon_config, parse_config
    from emovoice_daemon.scoring.models.loader import ModelError, load_classifier

    try:
        config = load_daemon_config(args.config) if args.config else parse_config(_dotted_yaml(args.set), "--set")
    except ConfigError as exc:
        raise SystemExit("emovoice-train calls: " + "; ".join(exc.errors)) from None
    config.model = dataclasses.replace(config.model, path=args.model or config.model.path, site_stats_path="",
                                       **({} if args.adapt is None else {"adapt": args.adapt}))
    try:
        return config, load_classifier(config.model)
    except ModelError as exc:
        raise SystemExit(f"emovoice-train calls: {exc}") from None


def _dotted_yaml(pairs: list[str]) -> str:
    """``section.key=value`` pairs as a YAML config text."""
    tree: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        section, _, name = key.partition(".")
        tree.setdefault(section, {})[name] = yaml.safe_load(value)
    return yaml.safe_dump(tree) if tree else ""


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
    e.add_argument("--cache-dir", default=str(default_cache_dir()), help="decoded audio cache (default: %(default)s)")
    e.add_argument("--json", help="write the full reports here")
    e.set_defaults(func=cmd_evaluate)
    c = sub.add_parser("calls", help="call-level evaluation: whole calls of unseen speakers through the daemon's path")
    c.add_argument("--model", help="model directory (default: the daemon's default model)")
    c.add_argument("--config", help="daemon config YAML whose escalation/pipeline/model keys apply")
    c.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=YAML",
                   help="a daemon config value instead of --config, e.g. escalation.enter=0.7 (repeatable)")
    c.add_argument("--line-conditions", action="store_true",
                   help="also no-caller calls (hold music, prompts, tones, noise, babble) and impaired calm→angry calls")
    c.add_argument("--corpus", nargs="+", default=list(CALL_CORPORA), metavar="KIND[=PATH]",
                   help="corpora (default: cremad ravdess emovo urdu under ../shared/data)")
    c.add_argument("--speakers", choices=("test", "val"), default="test",
                   help="CREMA-D: the shipped models' held-out test actors, or the validation actors thresholds are chosen on")
    adapt = c.add_mutually_exclusive_group()
    adapt.add_argument("--adapt", dest="adapt", action="store_true", default=None, help="force line adaptation on")
    adapt.add_argument("--no-adapt", dest="adapt", action="store_false", help="force line adaptation off")
    c.add_argument("--condition", choices=("telephony", "clean"), default="telephony")
    c.add_argument("--calls-per-kind", type=int, default=20,
                   help="at least this many calls of each kind per corpus (speakers repeat, in other clip orders)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--cache-dir", default=str(default_cache_dir()), help="decoded audio cache (default: %(default)s)")
    c.add_argument("--memo", default="", help="file memoising encoder features per window (faster reruns)")
    c.add_argument("--json", help="write the figures here")
    c.add_argument("--choose", metavar="ESCALATION_JSON",
                   help="choose the escalation settings on these calls (use --speakers val) and write them here")
    c.set_defaults(func=cmd_calls)
    s = sub.add_parser("site-sim", help="site learning simulated: verdicts of k calls, refit, the other speakers' calls")
    s.add_argument("--model", help="a refittable model directory: an encoder head or a compact student (default: the "
                                   "daemon's default model)")
    s.add_argument("--config", help="daemon config YAML whose escalation/pipeline/model keys apply")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=YAML", help="a daemon config value")
    s.add_argument("--corpus", nargs="+", default=["urdu", "emovo", "ravdess", "cremad"], metavar="KIND[=PATH]",
                   help="corpora (CREMA-D: its held-out test actors)")
    s.add_argument("--k", type=int, nargs="+", default=[0, 5, 10, 20, 50], help="verdict calls")
    s.add_argument("--splits", type=int, default=5, help="speaker splits (verdict side / scored side) per corpus")
    s.add_argument("--calls-per-kind", type=int, default=20)
    s.add_argument("--seed", type=int, default=0, help="call-building seed")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--cache-dir", default=str(default_cache_dir()), help="decoded audio and feature cache")
    s.add_argument("--memo", default="", help="file memoising encoder features per window (see calls --memo)")
    s.add_argument("--json", help="write every split's rows here")
    s.set_defaults(func=cmd_site_sim, adapt=None)
    h = sub.add_parser("head", help="train the call-level Whisper-encoder head on CREMA-D training actors and export it")
    h.add_argument("--out", required=True, help="model directory to write")
    h.add_argument("--hidden", type=int, default=256)
    h.add_argument("--chunk-s", type=float, default=None,
                   help="encode each clip in chunks this long, pooled over them, as the daemon's chunked model does "
                        "(1: the daemon's hop; 0: the whole window at once; default: the config's model.chunk_s)")
    h.add_argument("--layers", type=int, nargs="+",
                   help="hidden states the head reads (the daemon runs max(layers) encoder blocks; default: the config's)")
    h.add_argument("--teacher", nargs="+", metavar="DIR",
                   help="distil: train on these encoder heads' mean probabilities (model directories; several: an "
                        "ensemble) for every training-actor clip and machine-speech window, not on their labels")
    h.add_argument("--epochs", type=int, default=20)
    h.add_argument("--seed", type=int, help="the head's initialisation and batch order (the data keep the config's seed)")
    h.add_argument("--card", help="model card (README.md) to write with it")
    h.set_defaults(func=cmd_head)
    st = sub.add_parser("student", help="distil encoder heads into a compact model (the log-mel CNN) and export it")
    st.add_argument("--out", required=True, help="model directory to write")
    st.add_argument("--teacher", nargs="+", required=True, metavar="DIR",
                    help="encoder heads (model directories; several: an ensemble) whose mean probabilities it learns")
    st.add_argument("--compact-config", type=Path, default=Path("training/configs/default.yaml"),
                    help="the compact model's architecture (model:) and optimisation (train:)")
    st.add_argument("--epochs", type=int, default=20)
    st.add_argument("--seed", type=int, help="the student's initialisation and batch order")
    st.add_argument("--class-weight-power", type=float, default=0.0,
                    help="weight each window by its teachers' top class's frequency ** -POWER (0: the teachers' "
                         "probabilities as they are)")
    st.add_argument("--card", help="model card (README.md) to write with it")
    st.set_defaults(func=cmd_student, hidden=0)
    r = sub.add_parser("replay", help="(re)write an encoder head's or compact student's replay set (replay.npz, for "
                                      "site refits) from the CREMA-D training actors it was trained on")
    r.add_argument("--model", required=True, help="the model directory")
    r.set_defaults(func=cmd_replay, hidden=0)
    for p in (h, st):
        p.add_argument("--machine-speech", nargs="*", default=list(MACHINE_SPEECH), metavar="SOURCE",
                       help="machine speech trained on as NEUTRAL (training halves only): prompts-<en|es|fr|it|ru> "
                            "(Asterisk's prompt packages), espeak (espeak-ng's training voices); none: leave the option "
                            "empty (default: %(default)s)")
        p.add_argument("--machine-seconds", type=float, default=600.0, help="seconds of each machine-speech source")
    for p in (h, st, r):
        p.add_argument("--config", type=Path, default=Path("training/configs/whisper.yaml"),
                       help="encoder, cache and corpus settings")
        p.add_argument("--labels", choices=("upset", "anger", "corpus"), default="anger",
                       help="upset: NEGATIVE = anger and disgust, sadness and fear left out; anger: anger alone; "
                            "corpus: every negative emotion")
        p.add_argument("--conditions", nargs="+", default=["telephony", "aug1"], help="cached conditions to train on")
        p.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except TooFewSpeakers as exc:
        raise SystemExit(f"emovoice-train: {exc}") from None


if __name__ == "__main__":
    main()
