"""optim.py against a plain per-element transcription of spec section B (float64 loops)."""

import math

import numpy as np
import pytest

from ggtune.optim import Adam, AdamState, Convergence, ggml_n_dims, learning_rate_schedule


# ---- reference: section B written out literally -------------------------------------------------

def ref_cd(s, D, m):
    return (1 - m) * 0.5 * (1 + math.cos(math.pi * min(s, D) / D)) + m


def ref_lr(s, warmup, D, restart, m, enable_restart, alpha, min_alpha):
    if s < warmup:
        f = s / warmup
    elif not enable_restart:
        f = ref_cd(s, D, m)
    else:
        sp = s - warmup
        while sp > D:
            sp -= D
            D = int(D * restart)
        f = ref_cd(sp, D, m)
    m0 = min_alpha / alpha
    return alpha * (m0 + f * (1 - m0))


def ref_adam_step(xs, ms, vs, gs, t, lr, b1, b2, decay, decay_min_ndim, gclip, ndims):
    """Lists of flat float64 lists; returns updated copies."""
    total = 0.0
    for g in gs:
        for gi in g:
            total += gi * gi
    norm = math.sqrt(total)
    c = min(1.0, gclip / norm) if gclip > 0 else 1.0
    out = []
    for x, m, v, g, nd in zip(xs, ms, vs, gs, ndims):
        pd = decay * lr if nd >= decay_min_ndim else 0.0
        nx, nm, nv = [], [], []
        for xi, mi, vi, gi in zip(x, m, v, g):
            gi = c * gi
            mi = b1 * mi + (1 - b1) * gi
            vi = b2 * vi + (1 - b2) * gi * gi
            xi = xi * (1 - pd) - lr * (mi / (1 - b1 ** t)) / (math.sqrt(vi / (1 - b2 ** t)) + 1e-8)
            nx.append(xi), nm.append(mi), nv.append(vi)
        out.append((nx, nm, nv))
    return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]


# ---- schedule -----------------------------------------------------------------------------------

@pytest.mark.parametrize("enable_restart", [False, True])
@pytest.mark.parametrize("warmup,min_alpha", [(0, 0.0), (7, 0.0), (5, 2e-4)])
def test_schedule_matches_reference(enable_restart, warmup, min_alpha):
    kw = dict(warmup=warmup, cos_decay_steps=10, cos_decay_restart=1.5, cos_decay_min=0.1,
              enable_restart=enable_restart, alpha=1e-3, min_alpha=min_alpha)
    for s in range(0, 80):
        want = ref_lr(s, warmup, 10, 1.5, 0.1, enable_restart, 1e-3, min_alpha)
        assert learning_rate_schedule(s, **kw) == pytest.approx(want, rel=1e-12, abs=1e-15), s


def test_schedule_landmarks():
    kw = dict(warmup=4, cos_decay_steps=10, cos_decay_restart=2.0, cos_decay_min=0.1, alpha=1.0,
              min_alpha=0.0)
    assert learning_rate_schedule(0, enable_restart=False, **kw) == 0.0
    assert learning_rate_schedule(2, enable_restart=False, **kw) == 0.5
    # without restarts the raw step is used: at s = 10 the cosine is at its floor and stays there
    assert learning_rate_schedule(10, enable_restart=False, **kw) == pytest.approx(0.1)
    assert learning_rate_schedule(500, enable_restart=False, **kw) == pytest.approx(0.1)
    # with restarts s' = s - 4: floor at s'=10, restart right after, next cycle 20 long
    assert learning_rate_schedule(14, enable_restart=True, **kw) == pytest.approx(0.1)
    assert learning_rate_schedule(15, enable_restart=True, **kw) > 0.99
    assert learning_rate_schedule(34, enable_restart=True, **kw) == pytest.approx(0.1)


# ---- Adam ---------------------------------------------------------------------------------------

def make_params(rng):
    return {
        "blk.0.attn_q.weight.lora_a": rng.standard_normal((33, 4)).astype(np.float32),
        "blk.0.attn_q.weight.lora_b": rng.standard_normal((17, 4)).astype(np.float32),
        "blk.0.attn_norm.weight.lora_b": rng.standard_normal((1, 3)).astype(np.float32),  # 1-dim
        "bias_like": rng.standard_normal((5,)).astype(np.float32),
    }


@pytest.mark.parametrize("gclip,grad_scale", [(1.0, 1.0), (1e4, 1.0), (0.0, 1.0), (1.0, 1e-3)])
@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_adam_matches_reference(gclip, grad_scale, decay):
    rng = np.random.default_rng(1)
    params = make_params(rng)
    names = list(params)
    ndims = [ggml_n_dims(params[n].shape) for n in names]
    assert ndims == [2, 2, 1, 1]
    opt = Adam(params, beta1=0.9, beta2=0.999, decay=decay, decay_min_ndim=2, gclip=gclip)
    xs = [params[n].astype(np.float64).ravel().tolist() for n in names]
    ms = [[0.0] * params[n].size for n in names]
    vs = [[0.0] * params[n].size for n in names]
    clipped = []
    for t in range(1, 7):
        lr = learning_rate_schedule(t - 1, warmup=2, cos_decay_steps=4, cos_decay_restart=1.1,
                                    cos_decay_min=0.1, enable_restart=True, alpha=1e-2, min_alpha=0.0)
        grads = {n: (grad_scale * rng.standard_normal(params[n].shape)).astype(np.float32) for n in names}
        info = opt.step(grads, lr)
        clipped.append(info.clip_scale < 1.0)
        gs = [grads[n].astype(np.float64).ravel().tolist() for n in names]
        xs, ms, vs = ref_adam_step(xs, ms, vs, gs, t, lr, 0.9, 0.999, decay, 2, gclip, ndims)
        for n, x in zip(names, xs):
            np.testing.assert_allclose(params[n].ravel(), x, rtol=2e-5, atol=1e-6, err_msg=f"{n} t={t}")
    assert opt.iteration == 6
    # the parametrisation really exercises both sides of the clip
    assert any(clipped) == (gclip == 1.0 and grad_scale == 1.0)
    np.testing.assert_allclose(opt.m, np.concatenate(ms), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(opt.v, np.concatenate(vs), rtol=2e-5, atol=1e-9)


def test_decay_only_on_multi_dim_params():
    params = {"a": np.ones((3, 2), np.float32), "b": np.ones((1, 2), np.float32)}
    opt = Adam(params, decay=0.5, decay_min_ndim=2, gclip=0.0)
    opt.step({k: np.zeros_like(v) for k, v in params.items()}, lr=0.1)
    np.testing.assert_array_equal(params["a"], np.full((3, 2), 0.95, np.float32))
    np.testing.assert_array_equal(params["b"], np.ones((1, 2), np.float32))


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(2)
    p1 = make_params(rng)
    p2 = {k: v.copy() for k, v in p1.items()}
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in p1.items()} for _ in range(4)]
    a = Adam(p1, decay=0.1)
    for g in grads:
        a.step(g, 1e-3)
    b = Adam(p2, decay=0.1)
    for g in grads[:2]:
        b.step(g, 1e-3)
    saved = b.export_state()
    c = Adam(p2, decay=0.1)
    c.load_state(AdamState(saved.iteration, saved.m.copy(), saved.v.copy()))
    for g in grads[2:]:
        c.step(g, 1e-3)
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="'w'.*float32"):
        Adam({"w": np.ones(3)})
    opt = Adam({"w": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match=r"grads\['w'\]: shape"):
        opt.step({"w": np.ones(4, np.float32)}, 1e-3)
    with pytest.raises(ValueError, match="missing"):
        opt.step({}, 1e-3)
    with pytest.raises(ValueError, match="first moments"):
        opt.load_state(AdamState(1, np.zeros(2, np.float32), np.zeros(3, np.float32)))


def test_convergence_tests():
    c = Convergence(max_no_improvement=2)
    c.start(5.0)
    assert not c.converged(4.0, 0)
    assert not c.converged(4.5, 1)
    assert c.converged(4.2, 2)
    d = Convergence(past=2, delta=0.01)
    d.start(5.0)
    assert not d.converged(4.0, 0)
    assert not d.converged(3.0, 1)
    assert not d.converged(3.5, 2)  # compares with 4.0: 14% change
    assert d.converged(3.01, 3)  # compares with 3.0
    e = Convergence(epsf=0.01)
    e.start(2.0)
    assert e.converged(2.001, 0)
