"""A compact student (issue #25, step 4): the log-mel CNN the daemon runs in a few milliseconds a window, trained to
reproduce encoder heads' probabilities.

The student hears exactly the 3 s windows the teacher's features were encoded from (:func:`condition_wave` of every
cached condition: the telephony condition and the augmentation copies), for every training-actor clip - the clips the
call label map leaves out included - and every machine-speech window, and learns the teachers' mean probabilities for
each. Its pooled features are standardised before the head (``feature_norm``), so the daemon centres them on the
site's statistics as it does the encoder's. The epoch and the temperature are chosen on the validation actors'
telephony clips; the escalation settings then on their whole calls (``emovoice-train calls --choose``). Its replay
set (:func:`student_replay`) lets a site refit its head's last layer as it does an encoder head's.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from training.augment import TelephonyAugment
from training.calibration import fit_temperature
from training.call_head import MachineSpeech, Teacher, actor_clips, replay_layout
from training.loop import Log, TrainData, TrainSettings, batched_outputs, predict_logits, train_end_to_end
from training.train_compact import build
from training.train_whisper import FeatureCache, condition_wave


def _unchanged(x: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """No on-the-fly degradation: each window is already in its cached condition, as the teacher heard it."""
    return x


def student_data(data, cache: FeatureCache, teacher: Teacher, conditions: Sequence[str],  # noqa: ANN001 (Corpus)
                 label_map: Mapping[str, str | None], augment: TelephonyAugment, seed: int,
                 machine: MachineSpeech | None = None) -> TrainData:
    """The training actors' clips and the machine-speech windows in each cached condition, with the teachers'
    probabilities; the validation actors' telephony clips with their classes."""
    _, y, actors, _, va = actor_clips(data, label_map)
    sources = [(data, actors)] + ([(machine, np.arange(len(machine.store)))] if machine and machine.store else [])
    waves, targets = [], []
    for c in conditions:
        for corpus, rows in sources:
            targets.append(teacher.probs(cache.get(corpus, c)[rows]))
            waves += [condition_wave(corpus.store[i], int(i), c, augment, seed) for i in rows]
    val = [condition_wave(data.store[i], int(i), "telephony", augment, seed) for i in va]
    return TrainData(waves, np.concatenate(targets).astype(np.float32), val, y[va])


def distil_compact(data: TrainData, options: dict, settings: TrainSettings, seed: int, log: Log):  # noqa: ANN201
    """A ``feature_norm`` compact model (``options``: :class:`CompactConfig` fields) fitted to the teachers'
    probabilities, and its temperature fitted on the validation clips."""
    model, _ = train_end_to_end(build, {**options, "feature_norm": True}, data, settings, _unchanged, seed, log)
    temperature = fit_temperature(predict_logits(model, data.val_waves), data.val_labels)
    log(f"student: temperature {temperature:.3f}")
    return model, temperature


def pooled(model, waves: Sequence[np.ndarray]) -> np.ndarray:  # noqa: ANN001 (compact model)
    """The model's unnormalised pooled features of 8 kHz clips, float32[N, F], batched by similar length."""
    return batched_outputs(model, waves, 2 * model.config.conv1d_channels[-1], model.pooled_features)


def student_replay(model, data, label_map: Mapping[str, str | None], conditions: Sequence[str],  # noqa: ANN001
                   augment: TelephonyAugment, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a site refit of the student replays (:func:`emovoice_daemon.learning.refit.write_replay`): its features
    of the training actors' labelled clips in each condition it trained on, and as guard windows the validation
    actors' telephony clips; their classes, and which are guard windows."""
    _, y, _, tr, va = actor_clips(data, label_map)
    waves = [condition_wave(data.store[i], int(i), c, augment, seed) for c in conditions for i in tr]
    waves += [condition_wave(data.store[i], int(i), "telephony", augment, seed) for i in va]
    return pooled(model, waves), *replay_layout(y, tr, va, len(conditions))
