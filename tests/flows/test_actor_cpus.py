"""CPU model pools never reserve the CPUs the source tasks feeding them need (no deadlock on
a 2-core machine); on a large cluster each actor reserves its stage's own num_cpus."""

from curation.core.stage import Stage
from flows.run_ray import actor_cpus


class CpuModel(Stage):
    stateful = True
    num_cpus = 1.0


class GpuModel(Stage):
    stateful = True
    num_cpus = 1.0
    num_gpus = 0.5


def test_two_cpu_pools_leave_room_for_the_source_task_on_two_cores():
    a, b, g = CpuModel(), CpuModel(), GpuModel()
    stages = [a, b, g]
    reserved = sum(actor_cpus(s, stages, 2.0) for s in (a, b))
    assert reserved + 1.0 + 0.25 <= 2.0 + 1e-9
    assert actor_cpus(g, stages, 2.0) == 1.0  # bound by its GPU, not shrunk
    assert actor_cpus(a, stages, 64.0) == 1.0
