"""PSC's stages: exact resume, reference ops vs default ops, the caller's model left as it was, divergence."""
import copy
import warnings

import pytest
import torch

from pscfast.training.pipeline import STAGES, build_model
from pscfast.training.stage import lr_lambda
from tests.training.fake_pairs import FakePairs, tiny_config

CPU = torch.device("cpu")


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _run(cfg, stage, model, start=None, epochs=None):
    torch.manual_seed(1)  # the MoCo queue's initial draw
    st = STAGES[stage](cfg, model, FakePairs(), CPU, 0, 1)
    if start is not None:
        st.load_state_dict(start)
    if epochs is not None:
        st.epochs = epochs
    return st, st.run()


def test_resume_after_one_epoch_equals_uninterrupted_run():
    for stage in (1, 2):
        cfg = tiny_config()
        torch.manual_seed(0)
        base = build_model(cfg, CPU)
        a = copy.deepcopy(base)
        _, hist_a = _run(cfg, stage, a)
        b = copy.deepcopy(base)
        st, hist_b = _run(cfg, stage, b, epochs=1)          # interrupted after epoch 1 (2 steps) ...
        saved, saved_model = copy.deepcopy(st.state_dict(1)), _params(b)
        c = copy.deepcopy(base)
        c.load_state_dict(saved_model)
        _, hist_c = _run(cfg, stage, c, start=saved)        # ... and resumed in a fresh Stage
        assert len(hist_a) == 4 and len(hist_b) == 2 and len(hist_c) == 2
        assert [h["loss"] for h in hist_a] == [h["loss"] for h in hist_b + hist_c]
        pa, pc = _params(a), _params(c)
        for k in pa:
            assert torch.equal(pa[k], pc[k]), (stage, k)


def test_reference_ops_and_default_ops_give_the_same_loss_curve():
    curves = []
    for backend in ("torch", None):
        cfg = tiny_config(backend=backend, epochs_estimator=2)
        torch.manual_seed(0)
        _, hist = _run(cfg, 2, build_model(cfg, CPU))
        curves.append(torch.tensor([[h["loss"], h["similarity"], h["consistency"]] for h in hist]))
    # the batch-wide min-max of the similarity weight amplifies fp32 rounding ~30x (tests/ops/test_similarity_loss.py
    # bounds the weight at 1e-4 relative), and the BLAS kernels differ between CPUs
    torch.testing.assert_close(curves[0][0], curves[1][0], rtol=5e-4, atol=1e-6)
    # tau = 0.001 puts logits near 1000, so float rounding differences grow slowly along the run
    torch.testing.assert_close(curves[0], curves[1], rtol=1e-2, atol=1e-5)


def test_stage2_updates_only_the_estimator():
    cfg = tiny_config(epochs_estimator=1)
    torch.manual_seed(0)
    model = build_model(cfg, CPU)
    before = _params(model)
    _run(cfg, 2, model)
    after = _params(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # the frozen encoder's weights and BN statistics are unchanged
    assert changed and all(k.startswith("stn.") for k in changed)
    assert any(k.startswith("stn.net_4x.0.weight") for k in changed)


def _layout(model):
    """What a stage must leave alone: the module tree, each module's mode, each parameter and its flag."""
    return ([(name, type(m), m.training) for name, m in model.named_modules()],
            [(name, id(p), p.requires_grad) for name, p in model.named_parameters()])


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("mode", [True, False])
def test_a_stage_trains_the_model_in_place_and_leaves_its_layout(stage, mode):
    """The stages switch modes, freeze the encoder and compile on modules of their own: the caller's model
    keeps its structure, modes and requires_grad flags, and holds the trained values."""
    cfg = tiny_config(epochs_encoder=1, epochs_estimator=1, compile="aot_eager" if stage == 2 else False)
    torch.manual_seed(0)
    model = build_model(cfg, CPU).train(mode)
    before, values = _layout(model), _params(model)
    torch.manual_seed(1)
    STAGES[stage](cfg, model, FakePairs(), CPU, 0, 1).run()
    assert _layout(model) == before
    trained = "encoder." if stage == 1 else "stn."
    changed = {k for k, v in _params(model).items() if not torch.equal(v, values[k])}
    assert changed and all(k.startswith(trained) for k in changed), sorted(changed)[:5]


def test_a_non_finite_loss_stops_training_with_a_clear_error(monkeypatch):
    cfg = tiny_config(epochs_estimator=1)
    torch.manual_seed(0)
    st = STAGES[2](cfg, build_model(cfg, CPU), FakePairs(), CPU, 0, 1)
    real = st.losses

    def diverging(batch):
        out = real(batch)
        return {**out, "loss": out["loss"] * float("nan")}
    monkeypatch.setattr(st, "losses", diverging)
    with pytest.raises(FloatingPointError, match=r"stage 2, step 1: the loss is nan.*Lower --lr"):
        st.run()



def test_compiled_stages_follow_the_eager_run():
    """--compile: stage 1 compiles the encoders (a compiled MoCo forward saves the queue buffer that its update
    then mutates: a version error in backward), stage 2 the STN pair. Stage 1 runs inductor (the default):
    its partitioner and channels-last layouts (which broke aten's replicate-padding backward) are what failed,
    and no cheaper backend reproduces them. 64x64 and batch 4: at 32x32 and batch 2, layer4's batch norm
    sees two values and amplifies rounding."""
    for stage, backend in ((1, True), (2, "aot_eager")):
        curves = []
        for compile in (False, backend):
            cfg = tiny_config(compile=compile, augment=False, image_size=64, batch_size=4, moco_k=4)
            torch.manual_seed(0)
            torch._dynamo.reset()
            model = build_model(cfg, CPU)
            torch.manual_seed(1)
            hist = STAGES[stage](cfg, model, FakePairs(n=8), CPU, 0, 1).run()
            curves.append(torch.tensor([h["loss"] for h in hist]))
        # float32 rounding differs (fused kernels, other reduction orders) and grows along the run
        torch.testing.assert_close(curves[1][:3], curves[0][:3], rtol=1e-3, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_training_on_cuda_follows_the_cpu_run(amp, monkeypatch):
    """Both stages on a GPU (CUDA kernels of the default ops, AMP) follow the same run on CPU. Augmentation off:
    its generator lives on the training device, whose random stream differs from the CPU's."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 convolutions on both devices
    for stage in (1, 2):
        curves = []
        for device, precision in (("cpu", "none"), ("cuda", amp)):
            cfg = tiny_config(device=device, amp=precision, augment=False, image_size=64, batch_size=4, moco_k=4)
            torch.manual_seed(0)
            model = build_model(cfg, torch.device(device))
            torch.manual_seed(1)
            hist = STAGES[stage](cfg, model, FakePairs(n=8), torch.device(device), 0, 1).run()
            curves.append(torch.tensor([h["loss"] for h in hist]))
        cpu, cuda = curves
        assert torch.isfinite(cuda).all(), (stage, cuda)
        if amp == "none":  # as the compiled run: rounding differs and grows along the run
            torch.testing.assert_close(cuda[:3], cpu[:3], rtol=1e-3, atol=1e-5)
        else:  # bf16 keeps 8 bits of mantissa through the encoder
            torch.testing.assert_close(cuda[:1], cpu[:1], rtol=5e-2, atol=1e-3)


def test_a_queue_longer_than_the_training_set_is_warned_about_and_one_shorter_than_the_batch_refused():
    data = FakePairs(n=4)
    with pytest.warns(UserWarning, match=r"moco_k=4\) is not shorter than the 4 training pairs.*below 4"):
        STAGES[1](tiny_config(moco_k=4), build_model(tiny_config(), CPU), data, CPU, 0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        STAGES[1](tiny_config(moco_k=3), build_model(tiny_config(), CPU), data, CPU, 0, 1)  # fits
        STAGES[1](tiny_config(moco_k=16, epochs_encoder=1), build_model(tiny_config(), CPU), data, CPU, 0, 1)
    st = STAGES[1](tiny_config(moco_k=3, batch_size=4), build_model(tiny_config(), CPU), data, CPU, 0, 1)
    with pytest.raises(ValueError, match=r"4 keys per step \(the global batch\) do not fit the queue of K=3"):
        st.run()


def test_a_diverging_stn_stops_at_the_step_where_a_buffer_overflows():
    """At lr 1e8 the STN's BN running variance overflows while the loss is still finite: the run stops at that
    step, naming the stage, the step and the tensors, before the epoch's checkpoint could be written."""
    cfg = tiny_config(lr_estimator=1e8, epochs_estimator=3)
    torch.manual_seed(0)
    st = STAGES[2](cfg, build_model(cfg, CPU), FakePairs(), CPU, 0, 1)
    with pytest.raises(FloatingPointError, match=r"stage 2, step \d+: \d+ tensor\(s\) hold non-finite values after "
                                                 r"the update \(stn\.\S+\.running_var.*lr 1e\+08"):
        st.run()


def test_an_op_refusing_a_diverged_flow_names_the_step():
    cfg = tiny_config(epochs_estimator=1)
    torch.manual_seed(0)
    model = build_model(cfg, CPU)
    st = STAGES[2](cfg, model, FakePairs(), CPU, 0, 1)
    with torch.no_grad():
        model.stn.net_4x[0].weight.fill_(float("inf"))  # the coarse flow is not finite: the next op refuses it
    with pytest.raises(ValueError, match=r"^stage 2, step 1: pscfast\.ops\.\w+: .*NaN or infinite"):
        st.run()


def test_resume_with_another_lr_honours_it():
    """--resume with a new --lr: the schedule goes on from the checkpoint's step at the new scale (the
    scheduler's state would otherwise bring the old lr back), and the Stage says so."""
    cfg = tiny_config(epochs_estimator=2)
    torch.manual_seed(0)
    base = build_model(cfg, CPU)
    st, _ = _run(cfg, 2, copy.deepcopy(base), epochs=1)
    saved = copy.deepcopy(st.state_dict(1))
    assert STAGES[2](cfg, copy.deepcopy(base), FakePairs(), CPU, 0, 1).load_state_dict(copy.deepcopy(saved)) is None
    new = tiny_config(epochs_estimator=2, lr_estimator=1e-4)
    resumed = STAGES[2](new, copy.deepcopy(base), FakePairs(), CPU, 0, 1)
    note = resumed.load_state_dict(saved)
    assert note.startswith("stage 2: resuming at step 2 with lr 0.0001 instead of the checkpoint's 0.003")
    used = []
    step = resumed.train_step
    resumed.train_step = lambda batch: (used.append(resumed.optimizer.param_groups[0]["lr"]), step(batch))[1]
    resumed.run()
    f = lr_lambda(4, 1)  # 2 epochs of 2 steps, warm-up 0.5 epoch
    assert used == pytest.approx([1e-4 * f(2), 1e-4 * f(3)], rel=1e-12)
