import numpy as np
import pytest

from training.augment import (
    TELEPHONE_RATE,
    TelephonyAugment,
    add_noise,
    apply_gain,
    band_limit,
    eval_condition,
    g711_roundtrip,
    packet_loss,
    speed_perturb,
    to_telephone_rate,
)


def tone(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def band_energy_db(x: np.ndarray, rate: int, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / rate)
    return 10 * np.log10(spec[(f >= lo) & (f <= hi)].sum() + 1e-20)


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref.astype(np.float64) - test) ** 2))


def test_8k_path_has_no_aliased_energy() -> None:
    # 5 kHz cannot exist at 8 kHz; a naive decimation would fold it to 3 kHz.
    x16 = tone(1000, 16000) + tone(5000, 16000)
    y = to_telephone_rate(x16, 16000)
    assert len(y) == 8000
    assert band_energy_db(y, 8000, 2900, 3100) < band_energy_db(y, 8000, 900, 1100) - 60


def test_8k_source_is_untouched() -> None:
    x = tone(440, 8000)
    np.testing.assert_array_equal(to_telephone_rate(x, 8000), x)


def test_telephony_chain_keeps_nothing_above_3400_hz() -> None:
    x44 = tone(1000, 44100) + tone(3900, 44100) + tone(12000, 44100)
    aug = TelephonyAugment(p_gain=0, p_band_limit=1, p_noise=0, p_hum=0, p_codec=0, p_packet_loss=0)
    y = aug(x44, 44100, np.random.default_rng(0))
    assert len(y) == 8000
    passband = band_energy_db(y, 8000, 900, 1100)
    assert band_energy_db(y, 8000, 3700, 4000) < passband - 25
    assert band_energy_db(y, 8000, 3500, 4000) < passband - 20


def test_band_limit_passes_voice_band_and_cuts_low_hum() -> None:
    for f in (500, 1000, 3000):
        x = tone(f, 8000)
        assert abs(band_energy_db(band_limit(x), 8000, f - 50, f + 50) - band_energy_db(x, 8000, f - 50, f + 50)) < 3.5
    assert band_energy_db(band_limit(tone(60, 8000)), 8000, 0, 100) < band_energy_db(tone(60, 8000), 8000, 0, 100) - 30


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_g711_roundtrip_snr_is_in_the_codec_range(law: str) -> None:
    rng = np.random.default_rng(1)
    for amp in (0.05, 0.3, 0.8):
        x = np.clip(rng.standard_normal(8000) * amp / 3, -1, 1).astype(np.float32)
        s = snr_db(x, g711_roundtrip(x, law))
        assert 30 < s < 42, (law, amp, s)  # G.711 companding: roughly 35-38 dB over a wide range of levels


def test_g711_uses_daemon_codec_and_rejects_unknown_law() -> None:
    from emovoice_daemon.ingest.g711 import ulaw_decode, ulaw_encode

    x = tone(700, 8000)
    pcm = np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(g711_roundtrip(x, "ulaw"), ulaw_decode(ulaw_encode(pcm)).astype(np.float32) / 32768)
    with pytest.raises(ValueError):
        g711_roundtrip(x, "g729")


def test_noise_is_added_at_the_requested_snr() -> None:
    x = tone(1000, 8000)
    y = add_noise(x, 15.0, np.random.default_rng(0))
    assert abs(snr_db(x, y) - 15.0) < 0.5
    y_pink = add_noise(x, 15.0, np.random.default_rng(0), pink=True)
    assert abs(snr_db(x, y_pink) - 15.0) < 0.5


def test_packet_loss_zeroes_whole_packets_at_about_the_rate() -> None:
    x = np.ones(8000 * 20, dtype=np.float32)
    y = packet_loss(x, 8000, 0.1, np.random.default_rng(0))
    packets = y.reshape(-1, 160)
    assert set(np.unique(packets.min(axis=1) == packets.max(axis=1))) == {True}
    assert 0.08 < (packets[:, 0] == 0).mean() < 0.12


def test_gain_clips_to_full_scale() -> None:
    y = apply_gain(tone(500, 8000, amp=0.5), 12.0)
    assert np.abs(y).max() == pytest.approx(1.0)


def test_same_seed_same_audio_other_seed_other_audio() -> None:
    x = tone(300, 16000) + tone(1700, 16000)
    aug = TelephonyAugment(p_gain=1, p_band_limit=1, p_noise=1, p_hum=1, p_codec=1, p_packet_loss=1, loss_rate=(0.05, 0.1))
    a = aug(x, 16000, np.random.default_rng(42))
    b = aug(x, 16000, np.random.default_rng(42))
    c = aug(x, 16000, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and len(a) == 8000 and np.abs(a).max() <= 1.0


def dominant_hz(x: np.ndarray, rate: int) -> float:
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.abs(np.fft.rfft(x * np.hanning(len(x)))).argmax()])


@pytest.mark.parametrize("factor", [0.9, 0.95, 1.1])
def test_speed_perturbation_scales_pitch_and_duration(factor: float) -> None:
    y = speed_perturb(tone(1000, 8000), factor)
    assert len(y) == pytest.approx(8000 / factor, abs=2)
    assert dominant_hz(y, 8000) == pytest.approx(1000 * factor, abs=3)
    assert np.sqrt(np.mean(y[200:-200] ** 2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.02)


def test_speed_perturbation_snaps_to_grid_and_fires_in_the_chain() -> None:
    x = tone(1000, 8000)
    np.testing.assert_array_equal(speed_perturb(x, 1.004), x)  # rounds to 1.0: untouched
    aug = TelephonyAugment(p_speed=1, speed=(1.1, 1.1), p_gain=0, p_band_limit=0, p_noise=0, p_hum=0, p_codec=0, p_packet_loss=0)
    y = aug(x, 8000, np.random.default_rng(0))
    assert len(y) == pytest.approx(8000 / 1.1, abs=2) and dominant_hz(y, 8000) == pytest.approx(1100, abs=3)
    assert len(TelephonyAugment()(x, 8000, np.random.default_rng(0))) == 8000  # off by default


def test_eval_conditions_are_deterministic_and_degrade() -> None:
    x = tone(800, TELEPHONE_RATE)
    np.testing.assert_array_equal(eval_condition(x, 8000, "clean", 0), x)
    t1, t2 = eval_condition(x, 8000, "telephony", 7), eval_condition(x, 8000, "telephony", 7)
    np.testing.assert_array_equal(t1, t2)
    assert 15 < snr_db(band_limit(x), t1) < 21
    with pytest.raises(ValueError):
        eval_condition(x, 8000, "gsm", 0)
