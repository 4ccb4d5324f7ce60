"""Training-loop regularisers: mixup and the weights' exponential moving average."""
import numpy as np
import torch
from synthetic_audio import synth

from training.augment import TelephonyAugment
from training.loop import TrainData, TrainSettings, fit, mixup, predict_logits
from training.train_compact import build

SMALL = dict(conv2d_channels=[4, 8], conv1d_channels=[16, 16], hidden_size=16)


def data(n: int = 12) -> TrainData:
    kinds = ("buzz", "tone", "chirp")
    waves, labels = [synth(kinds[i % 3], 0.6, 8000, i) for i in range(n)], np.arange(n) % 3
    return TrainData(waves, labels, waves[:6], labels[:6])


def test_mixup_mixes_partners_with_the_first_clip_dominant() -> None:
    x = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    mixed, union, perm, lam = mixup(x, mask, 0.4, np.random.default_rng(3))
    assert 0.5 <= lam <= 1.0
    assert sorted(perm.tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])
    assert torch.equal(union, torch.maximum(mask, mask[perm]))


def test_ema_keeps_the_averaged_weights_not_the_last_step() -> None:
    def trained(ema_decay: float | None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = build(SMALL)
        fit(model, data(), TrainSettings(epochs=4, batch_size=4, lr=0.05, ema_decay=ema_decay), TelephonyAugment(), 0, lambda _: None)
        return model.state_dict()

    torch.manual_seed(0)
    start = build(SMALL).state_dict()
    moved = lambda state: sum(float((state[k].float() - start[k].float()).abs().sum()) for k in start if k.endswith("weight"))  # noqa: E731
    # an EMA that barely moves from the first step's weights stays near the start; plain training moves away
    assert moved(trained(0.999999)) < 0.5 * moved(trained(None))


def test_mixup_training_runs_and_records_history() -> None:
    torch.manual_seed(0)
    history = fit(build(SMALL), data(), TrainSettings(epochs=2, batch_size=4, mixup_alpha=0.2), TelephonyAugment(), 0, lambda _: None)
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) for h in history)


def test_soft_targets_pull_the_model_toward_the_teachers_probabilities() -> None:
    base = data()
    shifted = (base.train_labels + 1) % 3  # the teacher disagrees with every label
    teacher = np.full((len(shifted), 3), 0.1, np.float32)
    teacher[np.arange(len(shifted)), shifted] = 0.8
    soft = TrainData(base.train_waves, teacher, base.train_waves, shifted)
    torch.manual_seed(0)
    model = build({**SMALL, "feature_norm": True})
    fit(model, soft, TrainSettings(epochs=10, batch_size=4, lr=0.01, label_smoothing=0.0), lambda x, rate, rng: x, 0,
        lambda _: None)
    predicted = predict_logits(model, base.train_waves).argmax(1)
    assert (predicted == shifted).mean() >= 0.75 and (predicted == base.train_labels).mean() <= 0.25
