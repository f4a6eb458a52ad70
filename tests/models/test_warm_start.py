"""The STN's warm start from the features' own matching (pscfast.models.warm_start)."""
import pytest
import torch

from pscfast.models import STN, MatchStart, MatchStartConfig, PSCNet, load_checkpoint, save_checkpoint
from pscfast.models.warm_start import median_filter
from pscfast.ops._reference import identity_grid


def _shifted_pair(n=2, c=24, size=16, shift=3, seed=0):
    """Random features src (a distinct vector per cell) and tgt = src moved right by ``shift`` cells, so that
    tgt cell (y, x) matches src cell (y, x - shift); the true grid of the cells with x >= shift."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(n, c, size, size, generator=g)
    tgt = torch.randn(n, c, size, size, generator=g)
    tgt[..., shift:] = src[..., :-shift]
    truth = identity_grid(n, size, size).clone()
    truth[..., 0] -= shift * 2 / (size - 1)
    return src, tgt, truth[:, :, shift:]


@pytest.mark.parametrize("median", [False, True])
def test_it_finds_a_known_shift(median):
    src, tgt, truth = _shifted_pair()
    # a second layer of noise is ignored when layers picks the first
    noise = torch.randn(2, 8, 8, 8)
    flow = MatchStart(16, MatchStartConfig(temperature=0.01, layers=(0,), median=median))([src, noise], [tgt, noise])
    assert flow.shape == (2, 16, 16, 2)
    inner = flow[:, 1:-1, 4:-1] if median else flow[:, :, 3:]  # the median mixes in the unmatched border
    expected = truth[:, 1:-1, 1:-1] if median else truth
    torch.testing.assert_close(inner, expected, atol=1e-3, rtol=0)


def test_the_window_keeps_a_distant_second_peak_out():
    src, tgt, truth = _shifted_pair(n=1, shift=2)
    src[0, :, 15, 0] = tgt[0, :, 0, 8]  # a far copy of the feature of tgt cell (0, 8), whose match is (0, 6)

    def err(window):  # at tgt cell (0, 8)
        flow = MatchStart(16, MatchStartConfig(temperature=0.1, window=window, median=False))([src], [tgt])
        return (flow[0, 0, 8] - truth[0, 0, 6]).abs().max()
    assert err(1.0) < 0.05 < err(100.0)  # a window as wide as the grid averages the two peaks


def test_a_3x3_median_replaces_an_isolated_outlier():
    flow = identity_grid(1, 8, 8).clone()
    flow[0, 3, 4] = torch.tensor([0.9, -0.9])
    torch.testing.assert_close(median_filter(flow, 3), identity_grid(1, 8, 8))


def test_the_stn_adds_its_residuals_to_the_warm_start():
    src, tgt, _ = _shifted_pair(size=16)
    config = MatchStartConfig(temperature=0.01, median=False)
    stn, plain = STN(start=MatchStart(16, config)), STN()
    plain.load_state_dict(stn.state_dict())  # the start adds no weights: the same keys
    for s in (stn, plain):
        for net in (s.net_4x, s.net_8x, s.net_16x):
            torch.nn.init.zeros_(net[-2].weight)  # residuals zero, flow = its start
    start = MatchStart(16, config)([src, src], [tgt, tgt])
    torch.testing.assert_close(stn.eval()([src, src], [tgt, tgt]), start)
    torch.testing.assert_close(plain.eval()([src, src], [tgt, tgt]), identity_grid(2, 16, 16))


def test_a_checkpoint_keeps_the_warm_start(tmp_path):
    torch.manual_seed(0)
    config = MatchStartConfig(temperature=0.05, window=3.0, layers=(1,), median=True)
    model = PSCNet("resnet18", match_start=config).eval()
    assert model.state_dict().keys() == PSCNet("resnet18").state_dict().keys()
    x = torch.rand(1, 3, 64, 64)
    save_checkpoint(tmp_path / "m.pt", model)
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.match_start == config
    torch.testing.assert_close(loaded.predict_flow(x, x.flip(-1))[0], model.predict_flow(x, x.flip(-1))[0])
    save_checkpoint(tmp_path / "plain.pt", PSCNet("resnet18"))
    assert load_checkpoint(tmp_path / "plain.pt").match_start is None


@pytest.mark.parametrize("kw, words", [({"temperature": 0}, "temperature and window must be positive"),
                                       ({"window": -1.0}, "temperature and window must be positive"),
                                       ({"layers": ()}, "at least one layer")])
def test_bad_settings_are_refused(kw, words):
    with pytest.raises(ValueError, match=words):
        MatchStartConfig(**kw)


def test_a_layer_out_of_range_is_named():
    src = [torch.rand(1, 4, 16, 16)] * 2
    with pytest.raises(ValueError, match=r"MatchStart: layers \(2,\) out of range for 2 feature layers"):
        MatchStart(16, MatchStartConfig(layers=(2,)))(src, src)
