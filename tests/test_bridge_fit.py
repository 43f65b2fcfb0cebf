"""OPRD-Bridge Stage 1 (oprd.bridge.fit): the streamed teacher PCA against a direct one, the covariance cap, P_S
recovering a planted relation, best-epoch selection, the rank sweep, the shard reader, determinism, and the fitted
bridge in the Stage-2 loss. Tiny widths (D_s = 7, D_t = 13) and rows in three shards of uneven sizes."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from safetensors.torch import save_file

import oprd_kernels.reference as ref
from oprd.bridge import ModelIdentity, load_bridge, save_bridge
from oprd.bridge import pca as fitmod
from oprd.bridge.fit import fit_bridge, holdout_split, initial_projection, select_rows
from oprd.bridge.pca import teacher_pca
from oprd.bridge.projection import best_epoch, heldout_cosine, train_projection
from oprd.bridge.shards import ShardError, read_shards

D_S, D_T, LATENT = 7, 13, 4
CUTS = (0, 37, 187, 300)  # three shards: 37, 150 and 113 rows
S_LAYERS, T_LAYERS, LAYER_MAP = [1, 2, 3], [2, 4], [0, 0, 1]  # teacher layer 2 paired with student layers 1 and 2
STUDENT, TEACHER = ModelIdentity("student", "llama", D_S, 4, 32), ModelIdentity("teacher", "llama", D_T, 5, 32)
FAST = dict(rank=3, epochs=15, lr=0.05, batch_size=32)  # the paper's lr 1e-3 needs far more steps than 300 rows give


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Thousands of tiny AdamW steps run ~10x slower with two OpenMP threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def direct_pca(rows: torch.Tensor):
    """Mean, descending eigenvalues and sign-fixed components of all rows at once (torch.cov, eigh), float64."""
    values, vectors = torch.linalg.eigh(torch.cov(rows.double().T))
    comps = vectors.flip(1).T.clone()
    for row in comps:  # the largest-magnitude entry made positive, written out independently of fit.py
        if row[row.abs().argmax()] < 0:
            row.neg_()
    return rows.double().mean(0), values.flip(0), comps


def planted(gen: torch.Generator, n: int = CUTS[-1], noise: float = 0.05):
    """Paired rows from a shared latent c [n, 4]: teacher slot k rows c S_k U_k^T + mu_k + noise (decreasing
    singular values, anisotropic noise, a large mean), student layer l rows c B_l^T + noise. So P_T (h_T - mu_T)
    is a linear function of h_S up to noise, and the top-4 teacher eigenvalues are distinct and dominant."""
    c = torch.randn(n, LATENT, generator=gen, dtype=torch.float64)
    scale = torch.tensor([4.0, 3.0, 2.0, 1.5], dtype=torch.float64)
    teacher = []
    for _ in T_LAYERS:
        basis = torch.linalg.qr(torch.randn(D_T, D_T, generator=gen, dtype=torch.float64))[0][:, :LATENT]
        spread = torch.linspace(0.02, 0.3, D_T, dtype=torch.float64)
        mu = 10 * torch.randn(D_T, generator=gen, dtype=torch.float64)
        teacher.append((c * scale) @ basis.T + mu + spread * torch.randn(n, D_T, generator=gen, dtype=torch.float64))
    student = {l: c @ torch.randn(D_S, LATENT, generator=gen, dtype=torch.float64).T
               + noise * torch.randn(n, D_S, generator=gen, dtype=torch.float64) for l in S_LAYERS}
    return student, {l: teacher[slot] for l, slot in zip(S_LAYERS, LAYER_MAP)}


def to_shards(student: dict, teacher: dict, cuts=CUTS) -> list[dict]:
    return [{**{f"student.{l}": x[a:b].float() for l, x in student.items()},
             **{f"teacher.{l}": t[a:b].float() for l, t in teacher.items()}} for a, b in zip(cuts, cuts[1:])]


def fit(shards, **kw):
    args = dict(student=STUDENT, teacher=TEACHER, student_layers=S_LAYERS, teacher_layers=T_LAYERS,
                layer_map=LAYER_MAP, **FAST)
    return fit_bridge(shards, **{**args, **kw})


@pytest.fixture(scope="module")
def fitted():
    """One fit with a rank sweep, shared by the tests that only read it: (bridge, report, student, teacher rows)."""
    student, teacher = planted(torch.Generator().manual_seed(1234))
    bridge, report = fit(to_shards(student, teacher), ranks=[1, 2, 3, 4, 8])
    return bridge, report, student, teacher


# --------------------------------------------------------------------------------------------------- teacher PCA


def test_streamed_pca_equals_the_direct_one(gen, monkeypatch):
    _, teacher = planted(gen)
    rows = teacher[S_LAYERS[0]].float()
    mean, values, comps = direct_pca(rows)
    monkeypatch.setattr(fitmod, "PCA_CHUNK_ROWS", 5)  # shards split further into pieces of 5 rows, then merged
    pca = teacher_pca(rows[a:b] for a, b in zip(CUTS, CUTS[1:]))
    assert pca.rows == CUTS[-1]
    torch.testing.assert_close(pca.mean, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(pca.eigenvalues, values, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pca.components, comps, rtol=0, atol=1e-8)
    peak = pca.components.gather(1, pca.components.abs().argmax(1, keepdim=True))
    assert bool((peak > 0).all())
    assert bool((pca.eigenvalues[:-1] >= pca.eigenvalues[1:]).all())


def test_the_bridge_holds_the_direct_pca_of_each_teacher_layer(fitted):
    bridge, report, _, teacher = fitted
    for slot, t_layer in enumerate(T_LAYERS):
        first = S_LAYERS[LAYER_MAP.index(slot)]
        mean, values, comps = direct_pca(teacher[first].float())
        torch.testing.assert_close(bridge.proj_t[slot], comps[:3].float(), rtol=0, atol=1e-5)
        torch.testing.assert_close(bridge.mean_t[slot], mean.float(), rtol=0, atol=1e-5)
        assert report["teacher_layers"][slot]["teacher_layer"] == t_layer
        torch.testing.assert_close(torch.tensor(report["teacher_layers"][slot]["eigenvalues"], dtype=torch.float64),
                                   values[:8], rtol=1e-8, atol=1e-10)


def test_the_covariance_subsample_is_capped_seeded_and_used(gen):
    picked = select_rows(1000, 100, seed=3)
    assert picked.dtype == torch.int64 and len(picked) == 100 and len(set(picked.tolist())) == 100
    assert bool((picked[1:] > picked[:-1]).all()) and 0 <= int(picked[0]) and int(picked[-1]) < 1000
    assert torch.equal(picked, select_rows(1000, 100, seed=3))
    assert not torch.equal(picked, select_rows(1000, 100, seed=4))
    assert torch.equal(select_rows(80, 100, seed=3), torch.arange(80))

    student, teacher = planted(gen)
    bridge, report = fit(to_shards(student, teacher), max_rows=50, epochs=1, seed=3)
    assert report["rows"]["covariance"] == 50 and report["rows"]["collected"] == CUTS[-1]
    assert [t["rows_covariance"] for t in report["teacher_layers"]] == [50, 50]
    rows = teacher[S_LAYERS[0]].float()
    _, _, sub = direct_pca(rows[select_rows(CUTS[-1], 50, seed=3)])
    _, _, full = direct_pca(rows)
    torch.testing.assert_close(bridge.proj_t[0], sub[:3].float(), rtol=0, atol=1e-5)
    assert float((bridge.proj_t[0] - full[:3].float()).abs().max()) > 1e-3  # the cap changed the result


# ---------------------------------------------------------------------------------------------------- P_S training


def all_rows_cosine(proj_s, proj_t, mean_t, student, teacher, layers=S_LAYERS, layer_map=LAYER_MAP):
    """Per student layer, the mean cosine of P_S h_S and project_teacher(h_T) over all rows, computed here."""
    z = ref.project_teacher(torch.stack([teacher[l].float() for l in layers]), proj_t[layer_map], mean_t[layer_map])
    return [float(ref.cosine_similarity((student[l].float() @ proj_s[i].T)[None], z[i][None]))
            for i, l in enumerate(layers)]


def test_p_s_recovers_a_planted_linear_relation(fitted):
    """After fitting, >= 0.97 in the shared subspace (at init ~0), on the held-out rows and on all rows. A random P_S
    scores ~0, so a fit that does not train fails it; so does one whose targets kept the mean (no bias-free map makes
    the offset |P_T mu| ~ 17 against a spread of ~5, so its own held-out cosine stays low), and a bridge whose mean_t
    is not the teacher mean (checked below with mean_t = 0)."""
    bridge, report, student, teacher = fitted
    for pair in report["pairs"]:
        assert pair["cosine_after"] >= 0.97, pair
        assert abs(pair["cosine_before"]) < 0.5, pair
    assert min(all_rows_cosine(bridge.proj_s, bridge.proj_t, bridge.mean_t, student, teacher)) >= 0.97
    random_ps = torch.randn(bridge.proj_s.shape, generator=torch.Generator().manual_seed(0))
    assert max(abs(c) for c in all_rows_cosine(random_ps, bridge.proj_t, bridge.mean_t, student, teacher)) < 0.5
    zero_mean = torch.zeros_like(bridge.mean_t)
    assert max(all_rows_cosine(bridge.proj_s, bridge.proj_t, zero_mean, student, teacher)) < 0.5


def test_a_broken_pairing_cannot_be_fitted(gen):
    """The control for the threshold above: student rows shuffled against the teacher rows leave nothing to learn."""
    student, teacher = planted(gen)
    perm = torch.randperm(CUTS[-1], generator=gen)
    shuffled = {l: x[perm] for l, x in student.items()}
    _, report = fit(to_shards({3: shuffled[3]}, {3: teacher[3]}), student_layers=[3], teacher_layers=[4],
                    layer_map=[0])
    assert report["pairs"][0]["cosine_after"] < 0.5


def test_best_epoch_picks_the_highest_finite_cosine_earliest_on_ties():
    assert best_epoch([0.1, 0.5, 0.3]) == 2
    assert best_epoch([0.2, 0.7, 0.7, 0.1]) == 2
    assert best_epoch([float("nan"), 0.1, float("inf"), 0.05]) == 2
    with pytest.raises(ValueError, match="diverged.*lower `lr`"):
        best_epoch([float("nan"), float("nan")])


def test_training_keeps_the_best_held_out_epoch_not_the_last(gen):
    """Fewer train rows (30) than student width (40) and noisy targets: the held-out cosine peaks, then falls as P_S
    fits the noise. The returned P_S must score the peak, not the last epoch."""
    n, width, rank = 60, 40, 3
    x = torch.randn(n, width, generator=gen)
    z = x @ torch.randn(rank, width, generator=gen).T * 0.2 + torch.randn(n, rank, generator=gen)
    train, held = torch.arange(30), torch.arange(30, n)
    out = train_projection(x, z, train, held, initial_projection(rank, width, 0, 1), epochs=60, lr=0.05,
                           batch_size=8, generator=torch.Generator().manual_seed(0))
    history = out.cosine_per_epoch
    assert history[-1] < max(history) - 0.05  # the case does what it is built for
    assert out.best_epoch == history.index(max(history)) + 1 < len(history)
    assert heldout_cosine(out.proj, x[held], z[held]) == out.cosine_after == max(history)


def test_the_bridge_carries_the_best_epoch_of_each_layer(fitted):
    bridge, report, student, teacher = fitted
    train, held = holdout_split(CUTS[-1], 0.1, 0)
    assert (len(train), len(held)) == (270, 30) and report["rows"]["held_out"] == 30
    z = ref.project_teacher(torch.stack([teacher[l].float() for l in S_LAYERS]), bridge.proj_t[LAYER_MAP],
                            bridge.mean_t[LAYER_MAP])
    for i, (l, pair) in enumerate(zip(S_LAYERS, report["pairs"])):
        assert pair["best_epoch"] == best_epoch(pair["cosine_per_epoch"])
        recomputed = heldout_cosine(bridge.proj_s[i], student[l].float()[held], z[i][held])
        assert recomputed == pytest.approx(pair["cosine_after"], abs=1e-5)
        before = heldout_cosine(initial_projection(3, D_S, 0, l), student[l].float()[held], z[i][held])
        assert before == pytest.approx(pair["cosine_before"], abs=1e-5)


# ------------------------------------------------------------------------------------------------------- report


def test_the_rank_sweep_reports_every_rank(fitted):
    bridge, report, _, teacher = fitted
    sweep = report["rank_sweep"]
    assert [entry["rank"] for entry in sweep] == [1, 2, 3, 4, 8]
    for entry in sweep:
        assert len(entry["cosine_per_layer"]) == 3 and -1 <= entry["cosine"] <= 1
        assert entry["cosine"] == pytest.approx(sum(entry["cosine_per_layer"]) / 3)
    assert sweep[2]["cosine_per_layer"] == [p["cosine_after"] for p in report["pairs"]]  # rank 3 is the bridge's
    assert sweep[3]["cosine"] >= 0.95  # the planted latent has 4 dimensions
    for slot in range(len(T_LAYERS)):
        shares = [entry["explained_variance_per_teacher_layer"][slot] for entry in sweep]
        assert all(a <= b for a, b in zip(shares, shares[1:])) and shares[-1] <= 1 + 1e-12
        _, values, _ = direct_pca(teacher[S_LAYERS[LAYER_MAP.index(slot)]].float())
        for entry, share in zip(sweep, shares):
            assert share == pytest.approx(float(values[:entry["rank"]].sum() / values.sum()), rel=1e-9)
        assert shares[3] > 0.99
    assert bridge.fit["cosine_after"] == [p["cosine_after"] for p in report["pairs"]]
    assert bridge.fit["best_epoch"] == [p["best_epoch"] for p in report["pairs"]]
    json.dumps(report)


def test_the_bridge_saves_loads_and_projects_like_the_reference(fitted, tmp_path):
    bridge, report, _, teacher = fitted
    back = load_bridge(save_bridge(bridge, tmp_path / "bridge.safetensors"))
    for name in ("proj_t", "mean_t", "proj_s"):
        assert torch.equal(getattr(back, name), getattr(bridge, name))
    assert (back.rank, back.student_layers, back.teacher_layers, back.layer_map) == (3, S_LAYERS, T_LAYERS, LAYER_MAP)
    assert back.fit == bridge.fit and back.student == STUDENT and back.teacher == TEACHER
    rows = torch.stack([teacher[l].float() for l in S_LAYERS])
    z = ref.project_teacher(rows, back.proj_t[LAYER_MAP], back.mean_t[LAYER_MAP])
    for i, l in enumerate(S_LAYERS):
        mean, _, comps = direct_pca(teacher[l].float())  # the copies of one teacher layer are equal
        torch.testing.assert_close(z[i], ((rows[i].double() - mean) @ comps[:3].T).float(), rtol=0, atol=1e-4)


def test_the_stage2_loss_is_lower_with_the_fitted_p_s(fitted):
    bridge, _, student, teacher = fitted
    rows = torch.stack([student[l].float() for l in S_LAYERS])
    z = ref.project_teacher(torch.stack([teacher[l].float() for l in S_LAYERS]), bridge.proj_t[LAYER_MAP],
                            bridge.mean_t[LAYER_MAP])
    init = torch.stack([initial_projection(3, D_S, 0, l) for l in S_LAYERS])
    fitted_loss = float(ref.bridge_loss(rows, z, bridge.proj_s, loss_type="nmse"))
    init_loss = float(ref.bridge_loss(rows, z, init, loss_type="nmse"))
    assert fitted_loss < 0.1 * init_loss, (fitted_loss, init_loss)


# ---------------------------------------------------------------------------------------------------- determinism


def test_one_seed_gives_bit_identical_bridges_and_the_files_match_the_lists(gen, tmp_path):
    student, teacher = planted(gen)
    shards = to_shards(student, teacher)
    kw = dict(epochs=2, ranks=[1, 2], max_rows=200)
    a, report_a = fit(shards, **kw)
    for i, shard in enumerate(shards):
        positions = torch.arange(len(shard["student.1"]))  # as the collector adds them; the fit ignores them
        save_file({**shard, "positions.student": positions, "positions.teacher": positions.clone()},
                  str(tmp_path / f"rows-{i:05d}.safetensors"))
    b, report_b = fit(read_shards(tmp_path), **kw)
    c, _ = fit(str(tmp_path), seed=1, **kw)
    for name in ("proj_t", "mean_t", "proj_s"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert report_a == report_b and a.fit == b.fit
    assert not torch.equal(a.proj_s, c.proj_s) and not torch.equal(a.proj_t, c.proj_t)  # other split, subsample


def test_a_callable_is_called_for_every_pass(gen):
    student, teacher = planted(gen, n=60)
    shards = to_shards(student, teacher, cuts=(0, 25, 60))
    calls = []

    def fresh():
        calls.append(1)
        return iter(shards)

    bridge, _ = fit(fresh, epochs=1)
    assert len(calls) == 1 + len(T_LAYERS) + len(S_LAYERS)
    assert torch.equal(bridge.proj_s, fit(shards, epochs=1)[0].proj_s)


# ------------------------------------------------------------------------------------------------------- shards


def write(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def test_read_shards_reads_rows_files_in_name_order_lazily(tmp_path):
    one = {"student.1": torch.ones(2, D_S), "teacher.1": torch.ones(2, D_T, dtype=torch.bfloat16),
           "positions.student": torch.arange(2), "positions.teacher": torch.arange(2)}  # what the collector adds
    zero = {"student.1": torch.zeros(3, D_S), "teacher.1": torch.zeros(3, D_T, dtype=torch.bfloat16),
            "positions.student": torch.arange(3), "positions.teacher": torch.arange(3)}
    write(tmp_path / "rows-00001.safetensors", one)
    write(tmp_path / "rows-00000.safetensors", zero)
    (tmp_path / "notes.txt").write_text("ignored")
    shards = read_shards(tmp_path)
    assert [s.path.name for s in shards] == ["rows-00000.safetensors", "rows-00001.safetensors"]
    assert [s.num_rows for s in shards] == [3, 2] and "teacher.1" in sorted(shards[1]) and len(shards[1]) == 4
    assert "student.1" in shards[0] and "student.2" not in shards[0]
    assert torch.equal(shards[1]["teacher.1"], one["teacher.1"])
    with pytest.raises(KeyError):
        shards[0]["student.2"]


def test_read_shards_names_what_is_wrong(tmp_path):
    with pytest.raises(ShardError, match="is not a directory"):
        read_shards(tmp_path / "none")
    with pytest.raises(ShardError, match=r"no rows-\*\.safetensors files"):
        read_shards(tmp_path)
    good = {"student.1": torch.zeros(3, D_S), "teacher.1": torch.zeros(3, D_T)}
    cases = [
        ({**good, "student.2": torch.zeros(3, D_S), "teacher.2": torch.zeros(3, D_T)}, "keys .* differ from"),
        ({**good, "student.1": torch.zeros(4, D_S)}, "share one row count"),
        ({**good, "student.2": torch.zeros(3, D_S)}, r"\['student.2'\] have no partner"),
        ({**good, "student.x": torch.zeros(3, D_S), "teacher.x": torch.zeros(3, D_T)}, "unexpected key 'student.x'"),
        ({**good, "positions.student": torch.zeros(4, dtype=torch.int64)}, "share one row count"),
        ({"positions.student": torch.zeros(3, dtype=torch.int64)}, "holds no student.<l> / teacher.<l> tensors"),
        ({**good, "teacher.1": torch.zeros(3, D_T, dtype=torch.int64)}, "2-D floating tensor.*I64"),
        ({**good, "teacher.1": torch.zeros(3, D_T, 1)}, r"2-D floating tensor.*\[3, 13, 1\]"),
        ({**good, "teacher.1": torch.zeros(3, D_T + 1)}, "teacher tensors must share one width"),
    ]
    write(tmp_path / "rows-00000.safetensors", good)
    for tensors, message in cases:
        write(tmp_path / "rows-00001.safetensors", tensors)
        with pytest.raises(ShardError, match=message):
            read_shards(tmp_path)
    (tmp_path / "rows-00001.safetensors").write_bytes(pickle.dumps({"student.1": 1}))
    with pytest.raises(ShardError, match="rows-00001.safetensors.*not a safetensors file"):
        read_shards(tmp_path)


# --------------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("change, error, message", [
    (dict(rank=0), ValueError, r"`rank` must be an int in \[1, 13\] .*; got 0"),
    (dict(rank=14), ValueError, r"`rank` must be an int in \[1, 13\] \(min of the teacher width 13 .*; got 14"),
    (dict(rank=6, max_rows=5), ValueError, r"`rank` must be an int in \[1, 5\] .*the 5 covariance rows\); got 6"),
    (dict(rank=2.0), TypeError, r"`rank` must be an int .*got 2.0 \(float\)"),
    (dict(ranks=[1, 99]), ValueError, r"`ranks` must be an int in \[1, 13\].*got 99"),
    (dict(ranks=4), TypeError, "`ranks` must be a sequence of ints; got int"),
    (dict(epochs=0), ValueError, "`epochs` must be an int >= 1; got 0"),
    (dict(batch_size=0), ValueError, "`batch_size` must be an int >= 1; got 0"),
    (dict(lr=0.0), ValueError, "`lr` must be a finite number > 0; got 0.0"),
    (dict(lr=math.nan), ValueError, "`lr` must be a finite number > 0; got nan"),
    (dict(lr="1e-3"), TypeError, r"`lr` must be a finite number > 0; got '1e-3' \(str\)"),
    (dict(holdout=0.0), ValueError, r"`holdout` must be a number in \(0, 1\); got 0.0"),
    (dict(holdout=1), ValueError, r"`holdout` must be a number in \(0, 1\); got 1"),
    (dict(max_rows=1), ValueError, "`max_rows` must be an int >= 2.*; got 1"),
    (dict(layer_map=[0, 0]), ValueError, r"one teacher slot per student layer \(3\); got \[0, 0\]"),
    (dict(layer_map=[0, 0, 2]), ValueError, r"`layer_map` must be an int in \[0, 1\].*got 2"),
    (dict(layer_map=[0, 0, 0]), ValueError, r"`teacher_layers` \[4\] are paired with no student layer"),
    (dict(teacher_layers=[4, 2]), ValueError, r"unique and sorted; got \[4, 2\]"),
    (dict(student_layers=[1, 1, 3]), ValueError, r"`student_layers` must be non-empty and unique; got \[1, 1, 3\]"),
    (dict(student_layers=[1, 2, 9]), ValueError, r"`student_layers` must be an int in \[0, 4\].*got 9"),
    (dict(teacher=ModelIdentity("t", "llama", 12, 5, 32)), ValueError,
     r"shard 0 `teacher.1` must be a floating tensor \[37, 12\]; got shape \[37, 13\]"),
    (dict(student="s"), TypeError, "`student` must be a ModelIdentity; got str"),
])
def test_bad_arguments_name_the_argument_value_and_expectation(gen, change, error, message):
    student, teacher = planted(gen)
    with pytest.raises(error, match=message):
        fit(to_shards(student, teacher), **change)


def test_bad_shards_are_refused(gen):
    student, teacher = planted(gen, n=40)
    shards = to_shards(student, teacher, cuts=(0, 15, 40))
    with pytest.raises(TypeError, match="one-shot iterator"):
        fit(iter(shards))
    with pytest.raises(TypeError, match="single shard"):
        fit(shards[0])
    with pytest.raises(ValueError, match=r"`shards` is empty"):
        fit([])
    varying = iter([shards, shards[:1]])
    with pytest.raises(ValueError, match="gave 1 shards on a later pass, 2 on the first"):
        fit(lambda: next(varying, shards))
    del shards[1]["teacher.3"]
    with pytest.raises(ValueError, match=r"shard 1 has no \['teacher.3'\]"):
        fit(shards)
