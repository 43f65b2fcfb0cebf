"""The C++ entry points (oprd_kernels._C.alignment_run / bridge_run) check their argument structs themselves: a
caller that fills them wrongly (another trainer calling _C directly) gets a ValueError naming the field, the value
seen and the one expected, never a crash. The calls run in the test process, so a missing guard would take the
whole run down, which fails too. Also: the OpenMP team follows torch.get_num_threads()."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from oprd_kernels import _build, reference
from oprd_kernels._student_grads import dense_gradients, slot_arrays
from oprd_kernels._tables import layer_table
from oprd_kernels.cpu_ops._args import DTYPE_CODES, address, set_gradients, set_slots, set_table, set_weights
from oprd_kernels.cpu_ops.alignment import alignment_loss
from oprd_kernels.cpu_ops.bridge import bridge_loss

_C = _build.load_extension()
pytestmark = pytest.mark.skipif(_C is None, reason="oprd_kernels._C is not built")

L, B, S, D, N_SEL, R = 3, 2, 4, 6, 5, 3  # B*S = 8 student rows
OPENMP = _C is not None and _C.build_info()["openmp"]["enabled"]


def team(threads: int) -> int:
    """The team size a call given `threads` runs with: that many, or 1 in a build without OpenMP."""
    return threads if OPENMP else 1


class Call:
    """Valid arguments of one kernel call, filled as the cpu backend fills them, and the tensors they point into
    (kept alive here: the struct holds bare addresses)."""

    def __init__(self, op: str, *, rows: bool = True, gradients: bool = True, threads: int = 1) -> None:
        g = torch.Generator().manual_seed(0)
        self.op = op
        self.student = [torch.randn(B, S, D, generator=g) for _ in range(L)]
        self.rows = torch.tensor([6, 1, 1, 7, 0]) if rows else None
        n_sel = N_SEL if rows else B * S
        self.keep: list = []
        if op == "alignment":
            self.args = _C.AlignmentArgs()
            self.teacher = torch.randn(L + 1, n_sel, D, generator=g)  # one layer more: layer_map picks among them
            self.layer_map = torch.tensor([3, 0, 2])
            self.args.layer_map, self.args.t_layers = address(self.layer_map), L + 1
            teacher = layer_table(list(self.teacher.unbind(0)))
            set_table(self.args, "t", teacher)
        else:
            self.args = _C.BridgeArgs()
            self.teacher = torch.randn(L, n_sel, R, generator=g)
            self.proj = torch.randn(L, R, D, generator=g)
            teacher = layer_table(list(self.teacher.unbind(0)))
            set_table(self.args, "z", teacher)
            self.args.z_layers, self.args.rank = L, R
            self.args.proj, self.args.p_dtype = self.proj.data_ptr(), DTYPE_CODES[self.proj.dtype]
            self.args.p_stride_l, self.args.p_stride_r, self.args.p_stride_d = self.proj.stride()
        student = layer_table(self.student)
        set_table(self.args, "s", student)
        a = self.args
        a.num_layers, a.num_rows, a.num_sel, a.dim = L, B * S, n_sel, D
        self.slots = slot_arrays(self.rows)
        set_slots(a, self.slots)
        self.weights = set_weights(a, torch.rand(n_sel, generator=g))
        a.loss_type, a.num_threads = 1, threads
        self.row_loss, self.per_layer = torch.empty(L, n_sel), torch.empty(L)
        a.row_loss, a.per_layer = address(self.row_loss), address(self.per_layer)
        self.grads = None
        if gradients:
            self.grads = dense_gradients(L, B * S, D, self.student[0], self.rows, kernel_writes_every_row=True)
            self.scale = torch.ones(L)
            self.keep += [*set_gradients(a, self.grads, range(L), L), self.scale]
            a.layer_scale = address(self.scale)
            if op == "bridge":
                self.proj_grad, self.dz = torch.empty(L, R, D), torch.empty(L, n_sel, R)
                a.proj_grad, a.dz = address(self.proj_grad), address(self.dz)
        self.keep += [student, teacher]

    def run(self) -> int:
        return (_C.alignment_run if self.op == "alignment" else _C.bridge_run)(self.args)

    def want(self) -> torch.Tensor:
        """The per-layer losses the reference gives for these inputs."""
        kw = dict(rows=self.rows, weights=self.weights, loss_type="nmse", reduction="none")
        if self.op == "alignment":
            return reference.alignment_loss(self.student, self.teacher, layer_map=self.layer_map, **kw)
        return reference.bridge_loss(self.student, self.teacher, self.proj, **kw)


@pytest.mark.parametrize("op", ["alignment", "bridge"])
@pytest.mark.parametrize("rows", [True, False], ids=["rows", "all-rows"])
def test_valid_arguments_run_and_match_the_reference(op, rows):
    call = Call(op, rows=rows)
    assert call.run() == 1
    torch.testing.assert_close(call.per_layer, call.want(), rtol=1e-5, atol=1e-6)


def expect_error(call: Call, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call.run()


# (field, value, the message's start): struct fields set to a wrong value.
BOTH = [
    ("s_base", 0, "s_base = 0 (null); expected the address of the student's first layer"),
    ("s_table", 0, "s_table = 0 (null); expected the address of the student layer table"),
    ("row_loss", 0, "row_loss = 0 (null); expected the address of the output row losses"),
    ("per_layer", 0, "per_layer = 0 (null)"),
    ("num_sel", -1, "num_sel = -1; expected >= 0 (selected rows)"),
    ("num_rows", -8, "num_rows = -8; expected >= 0 (student rows B*S)"),
    ("num_layers", 0, "num_layers = 0; expected >= 1 (student layers)"),
    ("dim", -6, "dim = -6; expected >= 1"),
    ("s_seq", 0, "s_seq = 0; expected >= 1 (rows per student sample, S)"),
    ("s_dtype", 4, "s_dtype = 4; expected one of 0 (float32), 1 (bfloat16), 2 (float16) or 3 (float64)"),
    ("s_dtype", -1, "s_dtype = -1; expected one of 0 (float32)"),
    ("w_dtype", 9, "w_dtype = 9; expected one of"),
    ("grad_dtype", 5, "grad_dtype = 5; expected one of"),
    ("loss_type", 3, "loss_type = 3; expected one of 0 (mse), 1 (nmse) or 2 (cosine)"),
    ("num_threads", -2, "num_threads = -2; expected >= 0"),
    ("grad_count", 0, "grad_count = 0; expected >= 1"),
    ("grad_index", 0, "grad_index = 0 (null)"),
    ("slot_rows", 0, "slot_rows = 0 (null); expected an address: order, slot_rows and slot_start are given together"),
    ("num_rows", 5, "slot_rows[2] = 6; expected a student row in [0, num_rows = 5) (B*S)"),
]
ALIGNMENT = [
    ("t_base", 0, "t_base = 0 (null); expected the address of the teacher cache's first layer"),
    ("t_seq", 0, "t_seq = 0; expected >= 1"),
    ("t_dtype", 17, "t_dtype = 17; expected one of"),
    ("t_layers", 0, "t_layers = 0; expected >= 1 (layers in the teacher table t_table)"),
    ("t_layers", 3, "layer_map[0] = 3; expected a teacher layer in [0, t_layers = 3)"),
]
BRIDGE = [
    ("proj", 0, "proj = 0 (null); expected the address of the projectors [num_layers, rank, dim]"),
    ("p_dtype", 6, "p_dtype = 6; expected one of"),
    ("z_base", 0, "z_base = 0 (null)"),
    ("z_seq", -1, "z_seq = -1; expected >= 1"),
    ("z_dtype", 4, "z_dtype = 4; expected one of"),
    ("z_layers", 2, "z_layers = 2; expected num_layers = 3"),
    ("rank", 0, "rank = 0; expected >= 1 (projection rank r)"),
    ("dz", 0, "dz = 0 (null); expected the address of the scratch [num_layers, num_sel, rank], required with"),
]


@pytest.mark.parametrize("op,field,value,message",
                         [("alignment", *c) for c in BOTH + ALIGNMENT] + [("bridge", *c) for c in BOTH + BRIDGE])
def test_a_wrong_field_raises_value_error_naming_it(op, field, value, message):
    call = Call(op)
    setattr(call.args, field, value)
    struct = "AlignmentArgs" if op == "alignment" else "BridgeArgs"
    expect_error(call, f"{struct}.{message}")


# (array, index, value, the message): index arrays edited in place, as a wrong row-slot table would hold them.
ARRAYS = [
    ("slot_rows", 0, 8, "slot_rows[0] = 8; expected a student row in [0, num_rows = 8) (B*S), or -1 for an unused"),
    ("slot_rows", 2, 1 << 40, f"slot_rows[2] = {1 << 40}; expected a student row in [0, num_rows = 8)"),
    ("slot_rows", 1, -2, "slot_rows[1] = -2; expected a student row in [0, num_rows = 8)"),
    ("slot_rows", 1, 0, "slot_rows[1] = 0; expected each student row in one slot only"),
    ("slot_rows", 0, -1, "slot_rows[0] = -1; expected a student row: the slot owns 1 entries"),
    ("order", 3, 5, "order[3] = 5; expected an entry in [0, num_sel = 5)"),
    ("order", 3, -1, "order[3] = -1; expected an entry in [0, num_sel = 5)"),
    ("order", 0, 1, "order[1] = 1; expected each entry once (a permutation)"),
    ("slot_start", 0, 1, "slot_start[0] = 1; expected 0"),
    ("slot_start", 5, 4, "slot_start[5] = 4; expected num_sel = 5"),
    ("slot_start", 2, 9, "slot_start[2] = 9; expected a value in [slot_start[1] = 1, num_sel = 5]"),
    ("slot_start", 2, 0, "slot_start[2] = 0; expected a value in [slot_start[1] = 1, num_sel = 5]"),
]


@pytest.mark.parametrize("op", ["alignment", "bridge"])
@pytest.mark.parametrize("array,index,value,message", ARRAYS)
def test_an_index_out_of_range_raises_before_any_row_is_read(op, array, index, value, message):
    call = Call(op)
    order, slot_rows, slot_start = call.slots.order, call.slots.slot_rows, call.slots.slot_start
    assert slot_rows.tolist() == [0, 1, 6, 7, -1] and slot_start.tolist() == [0, 1, 3, 4, 5, 5]
    {"order": order, "slot_rows": slot_rows, "slot_start": slot_start}[array][index] = value
    call.per_layer.fill_(-1.0)
    expect_error(call, message)
    assert (call.per_layer == -1).all()  # nothing was computed


@pytest.mark.parametrize("op", ["alignment", "bridge"])
def test_wrong_gradient_tables_raise(op):
    call = Call(op)
    table, index = call.keep[0], call.keep[1]
    index[2] = 3
    expect_error(call, "grad_index[2] = 3; expected -1 or an entry of grad_table in [0, grad_count = 3)")
    index[2] = 0
    expect_error(call, "grad_index[2] = 0; expected each gradient written by one layer only")
    index[2] = 2
    table[1] = 0
    expect_error(call, "grad_table[1] = 0 (null); expected the address of a gradient")


def test_layer_map_out_of_range_raises():
    call = Call("alignment")
    call.layer_map[1] = -1
    expect_error(call, "AlignmentArgs.layer_map[1] = -1; expected a teacher layer in [0, t_layers = 4)")
    call.args.layer_map = 0
    call.args.t_layers = 2
    expect_error(call, "AlignmentArgs.t_layers = 2; expected >= num_layers = 3 without layer_map (identity)")


@pytest.mark.parametrize("op", ["alignment", "bridge"])
def test_all_rows_needs_num_sel_equal_to_num_rows(op):
    call = Call(op, rows=False)
    call.args.num_rows = 9
    expect_error(call, "num_sel = 8; expected num_rows = 9 when order/slot_rows/slot_start are 0 (all rows)")


@pytest.mark.parametrize("op", ["alignment", "bridge"])
def test_the_team_has_the_thread_count_it_was_given(op):
    results = []
    for threads in (1, 2, 1, 2):
        call = Call(op, threads=threads)
        assert call.run() == team(threads)
        outs = [call.per_layer, call.row_loss, *call.grads.tensors] + ([call.proj_grad] if op == "bridge" else [])
        results.append([t.clone() for t in outs])
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))
    call = Call(op, threads=0)  # 0: the OpenMP runtime's default for this thread
    assert call.run() >= 1


@pytest.fixture
def recorded(monkeypatch):
    """The cpu backend's calls into _C, each as (args.num_threads, the team size the call reported)."""
    calls: list[tuple[int, int]] = []

    def recording(run):
        def wrapper(args):
            team = run(args)
            calls.append((args.num_threads, team))
            return team
        return wrapper

    proxy = SimpleNamespace(AlignmentArgs=_C.AlignmentArgs, BridgeArgs=_C.BridgeArgs,
                            alignment_run=recording(_C.alignment_run), bridge_run=recording(_C.bridge_run))
    monkeypatch.setattr(_build, "load_extension", lambda: proxy)
    threads = torch.get_num_threads()
    yield calls
    torch.set_num_threads(threads)


def test_the_cpu_backend_follows_torch_set_num_threads(recorded):
    g = torch.Generator().manual_seed(1)
    student = [torch.randn(2, 30, 17, generator=g).requires_grad_() for _ in range(2)]
    rows = torch.randint(0, 60, (40,), generator=g)
    teacher, z, proj = torch.randn(2, 40, 17, generator=g), torch.randn(2, 40, 4), torch.randn(2, 4, 17)
    proj.requires_grad_()
    outputs = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        a = alignment_loss(student, teacher, rows=rows)
        b = bridge_loss(student, z, proj, rows=rows)
        outputs[threads] = [a, b, *torch.autograd.grad(a, student), *torch.autograd.grad(b, [*student, proj])]
        assert recorded and all(call == (threads, team(threads)) for call in recorded), recorded
        recorded.clear()
    assert all(torch.equal(x, y) for x, y in zip(outputs[1], outputs[2]))


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps (Linux)")
def test_one_openmp_runtime_instance_serves_torch_and_the_kernels():
    """The extension binds to the OpenMP runtime torch loaded (docs/kernels.md): one pool, one set of settings."""
    info = _C.build_info()["openmp"]
    if not info["enabled"]:
        pytest.skip("built without OpenMP")
    runtimes = re.compile(r"lib(g|i)?omp[\w.-]*\.so")
    mapped = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
              if runtimes.search(line.rsplit("/", 1)[-1])}
    assert len(mapped) == 1, mapped
    assert info["library"] and os.path.realpath(info["library"]) == os.path.realpath(mapped.pop())
