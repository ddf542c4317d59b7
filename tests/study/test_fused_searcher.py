"""How the fused searcher groups the points about to run, and what it tells the point source.

The searcher is driven directly (Tune calls suggest / on_trial_result / on_trial_complete the
same way); the point sources are the real ones of a grid and a TPE search space.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import sqlalchemy as sa
from ray.tune.search import Searcher

from proxstudy.study.driver_state import DriverState
from proxstudy.study.fused_searcher import FusedPointSearcher
from proxstudy.study.lease import LEASE_TABLE, acquire_lease
from proxstudy.study.points import point_source
from proxstudy.study.progress import Progress
from proxstudy.study.space import grid_points, parse_space, recorded_distributions
from proxstudy.study.storage import storage_engine
from proxstudy.workers.fused_plan import fusion_key
from proxstudy.workers.fused_trainable import FUSED_MEMBERS_KEY, MEMBER_REPORTS_KEY
from proxstudy.workers.trainable import POINT_KEY, TRIAL_CONFIG_KEY
from proxstudy.workers.vocabulary import OBJECTIVE, REPORT_STATUS
from tests.support.cli import synthetic_space


def driver_for(doc: dict) -> DriverState:
    space = parse_space(doc, "<test>")
    return DriverState(storage=None, study_id=0, space=space, source=point_source(space, []),  # type: ignore[arg-type]
                       distributions=recorded_distributions(space), device="cpu", cpus_per_trial=1.0,
                       progress=Progress("test", 0, 0, 0, 0, enabled=False))


def suggest_all(searcher: FusedPointSearcher) -> list[list[dict]]:
    groups = []
    while (config := searcher.suggest(f"t{len(groups)}")) != Searcher.FINISHED:
        groups.append(config[FUSED_MEMBERS_KEY])
    return groups


def test_a_grid_is_cut_evenly_per_fusion_key():
    # backprop: 3 lrs; cg: cg_iterations 1 and 2 (two fusion keys) x 2 lrs; 3 seeds each
    driver = driver_for(synthetic_space(seeds=(0, 1, 2)))
    groups = suggest_all(FusedPointSearcher(driver, 4))
    keys = [member[POINT_KEY] for group in groups for member in group]
    assert sorted(keys) == sorted(p.key for p in grid_points(driver.space))  # each point once
    for group in groups:
        assert len({fusion_key(member[TRIAL_CONFIG_KEY]) for member in group}) == 1
    # backprop's 9 points: 3 groups of 3 (not 4 + 4 + 1); each cg key's 6 points: 3 + 3
    assert sorted(len(group) for group in groups) == [3] * 7
    assert set(keys) == set(driver.points_by_key)


def test_groups_fill_every_slot_of_the_last_round():
    """With 2 trials at once, the 7 groups of K = 4 become 8: the widest key is cut once more."""
    driver = driver_for(synthetic_space(seeds=(0, 1, 2)))
    groups = suggest_all(FusedPointSearcher(driver, 4, slots=2))
    assert len(groups) == 8 and sorted(len(group) for group in groups) == [2, 2, 2, 3, 3, 3, 3, 3]
    assert sorted(m[POINT_KEY] for group in groups for m in group) == sorted(p.key for p in grid_points(driver.space))


def test_auto_size_fits_every_member_of_a_small_grid():
    groups = suggest_all(FusedPointSearcher(driver_for(synthetic_space(seeds=(0, 1, 2))), None))
    assert sorted(len(group) for group in groups) == [6, 6, 9]  # one fused trial per key


def test_tpe_points_are_gathered_and_told_per_member():
    doc = synthetic_space(sampler={"name": "tpe", "n_trials": 4, "seed": 0}, seeds=(0, 1))
    doc["methods"]["cg"]["cg_iterations"] = 2
    driver = driver_for(doc)
    told = []
    source_finished = driver.source.point_finished
    driver.source.point_finished = lambda point, status, value: (told.append((point.key, status, value)),
                                                                 source_finished(point, status, value))
    searcher = FusedPointSearcher(driver, 3)
    first = searcher.suggest("a")[FUSED_MEMBERS_KEY]
    assert len(first) == 3 and len({fusion_key(m[TRIAL_CONFIG_KEY]) for m in first}) == 1
    done, running, lost = (m[POINT_KEY] for m in first)
    # a member report that is final tells the source at once; a running one does not
    searcher.on_trial_result("a", {MEMBER_REPORTS_KEY: [
        {POINT_KEY: done, REPORT_STATUS: "completed", OBJECTIVE: 0.5},
        {POINT_KEY: running, REPORT_STATUS: "running", OBJECTIVE: 0.7},
    ]})
    assert told == [(done, "completed", 0.5)]
    searcher.on_trial_result("a", {MEMBER_REPORTS_KEY: [{POINT_KEY: running, REPORT_STATUS: "diverged",
                                                         OBJECTIVE: None}]})
    # the fused trial ends without the third member's result: it failed
    searcher.on_trial_complete("a", {MEMBER_REPORTS_KEY: []})
    assert told[1:] == [(running, "diverged", None), (lost, "failed", None)]
    rest = suggest_all(searcher)
    counts = Counter(m[POINT_KEY] for group in [first, *rest] for m in group)
    assert sum(counts.values()) == 2 * 4 * 2 and set(counts.values()) == {1}  # 2 methods x 4 x 2 seeds
    assert all(len(group) <= 3 for group in rest)


def test_a_driver_that_lost_its_lease_starts_no_more_fused_trials(tmp_path):
    """A successor took the study over: the stalled driver hands out nothing more, fused or not."""
    url = f"sqlite:///{tmp_path / 'lease.db'}"
    lease = acquire_lease(storage_engine(url), "test", ttl_s=30, heartbeat=False)
    driver = dataclasses.replace(driver_for(synthetic_space(seeds=(0, 1, 2))), lease=lease)
    searcher = FusedPointSearcher(driver, 4)
    assert searcher.suggest("t0") != Searcher.FINISHED
    with storage_engine(url).begin() as conn:  # the lease expired and a successor took it
        conn.execute(sa.text(f"UPDATE {LEASE_TABLE} SET token = 'theirs'"))
    assert not lease.renew() and lease.lost
    assert searcher.suggest("t1") == Searcher.FINISHED
    lease.release()


def test_groups_are_handed_out_largest_first():
    """Members x flops per step x epochs, non-increasing: the ProxProp groups (more flops a
    step) before backprop's, though the grid lists backprop first."""
    from proxstudy.workers.fused_plan import member_cost

    driver = driver_for(synthetic_space(seeds=(0, 1, 2)))
    groups = suggest_all(FusedPointSearcher(driver, 4))
    work = [len(g) * member_cost(g[0][TRIAL_CONFIG_KEY]).flops_per_step for g in groups]
    assert work == sorted(work, reverse=True)
    modes = [g[0][TRIAL_CONFIG_KEY].mode for g in groups]
    assert modes[0] == "prox_cg" and modes[-1] == "gradient", modes
