import math

import pytest

from megatron_rw import ReweightConfig, temperature_at


def test_burn_in_is_uniform_then_constant():
    cfg = ReweightConfig(strategy="linupper", r=0.4, warmup_iters=1000)
    assert temperature_at(cfg, 0) == math.inf
    assert temperature_at(cfg, 999) == math.inf
    assert temperature_at(cfg, 1000) == 0.4
    assert temperature_at(cfg, 10**7) == 0.4


@pytest.mark.parametrize("schedule", ["linear", "geometric"])
def test_annealed_schedules(schedule):
    cfg = ReweightConfig(strategy="linupper", r=0.4, warmup_iters=10, schedule=schedule,
                         r_start=100.0, anneal_iters=100)
    values = [temperature_at(cfg, i) for i in range(10, 111)]
    assert values[0] == pytest.approx(100.0)
    assert values[-1] == pytest.approx(0.4)
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert temperature_at(cfg, 5000) == pytest.approx(0.4)
    mid = temperature_at(cfg, 60)
    assert mid == pytest.approx(50.2 if schedule == "linear" else math.sqrt(100 * 0.4))


def test_schedule_depends_on_iteration_only():
    cfg = ReweightConfig(strategy="quadratic", warmup_iters=3, schedule="linear", anneal_iters=7)
    assert [temperature_at(cfg, i) for i in range(20)] == [temperature_at(cfg, i) for i in range(20)]
