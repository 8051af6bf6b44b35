"""arihpc plan: the Monte Carlo campaign planner (arihpc/planning/simulation.py) and its command."""

import json

import numpy as np
import pytest
from click.testing import CliRunner, Result
from helpers import run, select_mous

from arihpc.cli.main import main
from arihpc.planning import simulation as sim
from arihpc.planning.model import PowerLaw
from arihpc.sites.profile import load_profile

NO_FAILURES = sim.Assumptions()          # resume on, nothing fails, no job start cost


def plan(*args) -> Result:
    """arihpc plan without a store: the study's distribution unless a catalog is given."""
    return CliRunner().invoke(main, ["plan", *map(str, args)], catch_exceptions=False)


def plan_json(*args: str, store: str | None = None) -> dict:
    result = run(store, "plan", "--format", "json", *args) if store else \
        plan("--format", "json", *args)
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def fixed(hours: list[float], sizes: list[float] | None = None) -> sim.Workload:
    h = np.array([hours], dtype=float)
    s = np.array([sizes if sizes else [1.0] * len(hours)], dtype=float)
    return sim.Workload(s, h, "fixed")


def test_the_study_twelve_years_on_one_machine_and_two_on_seven_with_20_percent(tmp_path):
    one = plan_json("--machines", "1", "--no-failures", "--runs", "200")
    assert 10 <= one["duration_years"]["median"] <= 14          # the study: about 12 years
    assert one["done"]["median"] == 7000
    seven = plan_json("--machines", "7", "--no-failures", "--reruns", "0.2", "--runs", "200")
    # the study: about 24 months on 7 machines, 20 % for failures and re-runs
    assert 1.8 <= seven["duration_years"]["median"] <= 2.3
    assert seven["duration_years"]["median"] == pytest.approx(
        one["duration_years"]["median"] * 1.2 / 7, rel=0.05)
    assert seven["lost_cpu_h"]["median"] > 0                     # the re-runs' first runs


def test_without_stage_resume_a_96_hour_walltime_loses_more_cpu_hours():
    on = plan_json("--sites", "mup", "--runs", "100", "--mous", "2000")
    off = plan_json("--sites", "mup", "--runs", "100", "--mous", "2000", "--no-resume")
    assert on["resume"] is True and off["resume"] is False
    assert off["lost_cpu_h"]["median"] > 1.5 * on["lost_cpu_h"]["median"]
    assert off["walltime_cuts"]["median"] > 0
    assert off["failed"]["median"] > on["failed"]["median"]      # cut twice, then given up


def test_list_scheduling_on_two_slots_and_utilisation():
    plan = sim.simulate(fixed([5, 3, 2, 2]), sim.machines(2), NO_FAILURES, seed=0)
    # 5 -> slot A (0-5), 3 -> B (0-3), 2 -> B (3-5), 2 -> A or B (5-7)
    assert plan.makespan_h.tolist() == [7.0]
    assert plan.done.tolist() == [4] and plan.cuts.tolist() == [0]
    assert plan.utilisation("machines").tolist() == pytest.approx([12 / 14])


def test_walltime_resume_or_restart_from_scratch():
    pool = [sim.Pool("s", "c", 1, 2.0, 10.0, walltime_h=5.0, usable_h=4.0)]
    quarters = {"fetch": 1, "restore": 1, "image": 1, "export": 1}     # 2.5 h each
    resume = sim.Assumptions(resume=True, job_start_h=0.5, stage_fractions=quarters)
    plan = sim.simulate(fixed([10.0]), pool, resume, seed=0)
    assert plan.cuts.tolist() == [2]                        # three jobs of at most 4 h
    assert plan.makespan_h.tolist() == [11.0]               # + two fresh job starts
    assert plan.lost_cpu_h.tolist() == [0.0] and plan.done.tolist() == [1]
    scratch = sim.simulate(fixed([10.0]), pool, sim.Assumptions(resume=False,
                                                               no_resume_retries=1), seed=0)
    assert scratch.cuts.tolist() == [2] and scratch.done.tolist() == [0]
    assert scratch.lost_cpu_h.tolist() == [2 * 5.0 * 2.0]   # two whole jobs, 2 cores each
    fits = sim.simulate(fixed([3.0]), pool, sim.Assumptions(resume=False), seed=0)
    assert fits.done.tolist() == [1] and fits.cuts.tolist() == [0]
    # with resume, a stage longer than a job's usable time cannot run at this site
    whole = sim.simulate(fixed([10.0]), pool, sim.Assumptions(resume=True), seed=0)
    assert whole.unroutable.tolist() == [1] and whole.done.tolist() == [0]


def test_routing_by_size_memory_and_the_smallest_node_class():
    pools = [p for name in ("eso", "itarc") for p in sim.site_pools(load_profile(name))]
    assert {(p.site, p.node_class): p.slots for p in pools} == {
        ("eso", "mem64"): 12, ("eso", "mem128"): 12, ("eso", "mem256"): 3,
        ("itarc", "xeon32"): 11, ("itarc", "opteron8"): 11}
    memory = PowerLaw.through(13, 8, 0.5)
    table = sim._Pools(pools, memory, NO_FAILURES)
    names = [f"{p.site}/{p.node_class}" for p in table.pools]

    def taking(size: float) -> set[str]:
        return {names[table.slot_pool[s]] for s in np.flatnonzero(
            table.taking(np.array([size]), np.array([1.0]))[0])}

    assert taking(5) == {"itarc/opteron8"}                  # 5 GB: 4.96 GB of memory
    assert taking(50) == {"itarc/xeon32"}                   # under ESO's 100 GB
    assert taking(150) == {"eso/mem64", "itarc/xeon32"}     # 27 GB: both sites
    assert taking(1000) == {"eso/mem128"}                   # 70 GB: only ESO's larger nodes
    assert taking(20000) == set()                           # 314 GB: nobody
    plan = sim.simulate(fixed([1.0, 1.0], [5, 20000]), pools, NO_FAILURES, 0, memory)
    assert plan.unroutable.tolist() == [1] and plan.done.tolist() == [1]
    assert plan.busy_h["itarc"].tolist() == [1.0] and plan.busy_h["eso"].tolist() == [0.0]


def test_failures_follow_the_retry_policy_and_resume_keeps_checkpoints():
    rng = np.random.default_rng(3)
    hours = np.full((1, 20000), 10.0)
    always = sim.Assumptions(failures={"tclean": (1.0, "image")}, retries={"tclean": 1},
                             stage_fractions={"restore": 0.5, "image": 0.5})
    slot_h, lost, done = sim.draw_failures(rng, hours, always)
    assert not done.any()                                   # fails on every attempt: given up
    assert (lost == slot_h).all() and (lost >= 5.0).all()   # its checkpointed half is lost
    half = sim.Assumptions(failures={"tclean": (0.5, "image")}, retries={"tclean": 1},
                           stage_fractions={"restore": 0.5, "image": 0.5})
    slot_h, lost, done = sim.draw_failures(rng, hours, half)
    assert done.mean() == pytest.approx(0.75, abs=0.02)     # fails twice: 1 in 4
    # resumed: a failure loses only its part of the image stage (mean 2.5 h)
    struck = done & (lost > 0)
    assert lost[struck].mean() == pytest.approx(2.5, rel=0.05)
    scratch = sim.draw_failures(rng, hours, sim.Assumptions(
        resume=False, failures={"tclean": (0.5, "image")}, retries={"tclean": 1},
        stage_fractions={"restore": 0.5, "image": 0.5}))
    assert scratch[1][scratch[2] & (scratch[1] > 0)].mean() == pytest.approx(7.5, rel=0.05)


@pytest.mark.samples
def test_a_catalog_plans_what_the_selection_selects(samples_dir, tmp_path):
    files = [samples_dir / n for n in ("study7__survey_BH.tsv", "study7__NGC3504.tsv",
                                       "astroquery-legacy__ngc4945.xml")]
    url = f"sqlite:///{tmp_path}/c.db"
    assert run(url, "catalog", "import", *files).exit_code in (0, 1)
    summary = run(url, "select").stderr.splitlines()[-1]      # "33 MOUS: 14 selected (...)"
    count = int(summary.split(": ")[1].split(" selected")[0])
    planned = plan_json("--machines", "2", "--runs", "10", *[
        a for f in files for a in ("--catalog", str(f))])
    assert count > 0 and planned["done"]["median"] + planned["failed"]["median"] == count
    assert "selected in" in planned["workload"]
    bad = plan("--machines", "1", "--catalog", samples_dir / "astroquery__alma-shapes.xml")
    assert bad.exit_code == 1 and "alma-shapes.xml:1: field 'member_ous_uid'" in bad.output


def test_a_store_plans_what_is_left_with_run_times_fitted_to_its_history(tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    uids = [f"uid://A001/X40/X{i:x}" for i in range(1, 41)]
    select_mous(url, tmp_path, uids, {u: (i + 1) * 10**9 for i, u in enumerate(uids)})
    plan = plan_json("--machines", "1", "--runs", "50", "--no-failures", store=url)
    assert plan["done"]["median"] == 40
    # the default model: 7 h at 13 GB, linear in size: sum over 1..40 GB
    expected = 7 / 13 * sum(range(1, 41))
    assert plan["duration_h"]["median"] == pytest.approx(expected, rel=0.25)
    assert "left in the store, the default size model" in plan["workload"]


def test_run_times_are_fitted_to_the_mous_the_store_has_done(tmp_path):
    from arihpc.store.campaign import CampaignStore

    url = f"sqlite:///{tmp_path}/c.db"
    uids = [f"uid://A001/X41/X{i:x}" for i in range(1, 31)]
    size = {u: 2 + i % 10 for i, u in enumerate(uids)}                  # 2..11 GB
    select_mous(url, tmp_path, uids, {u: g * 10**9 for u, g in size.items()})
    store = CampaignStore.open(url)
    for uid in uids[:10]:               # done: 3 h per GB, unlike the default 7 h / 13 GB
        attempt = store.start_attempt(uid, "ci", 1.0)
        record = {"stage": "image", "start": 1.0, "end": 2.0, "wall_s": size[uid] * 3 * 3600,
                  "cpu_s": 1.0, "peak_rss": 10**9, "outputs": {}}
        store.finish_attempt(attempt, {"uid": uid, "status": "done",
                                       "records": {"image": record}}, "done")
    store.close()
    plan = plan_json("--machines", "1", "--runs", "50", "--no-failures", store=url)
    assert plan["done"]["median"] == 20                                  # what is left
    assert "fitted to 10 MOUS done" in plan["workload"]
    assert "size^1.00, scatter 0.00" in plan["workload"]
    assert plan["duration_h"]["median"] == pytest.approx(
        3 * sum(size[u] for u in uids[10:]), rel=1e-6)


def test_plan_refuses_sites_and_machines_together_and_writes_a_plot(tmp_path):
    both = plan("--sites", "mup", "--machines", "2")
    assert both.exit_code == 2 and "either --sites or --machines" in both.output
    png = tmp_path / "plan.png"
    shown = plan("--sites", "mup,itarc", "--runs", "20", "--mous", "500", "--plot", png)
    assert shown.exit_code == 0 and "utilisation:" in shown.stdout and "mup" in shown.stdout
    from matplotlib.image import imread
    pixels = imread(png)
    assert pixels.shape[0] > 200 and pixels[..., :3].std() > 0.1      # drawn, not blank


def test_a_failure_rate_in_an_unknown_stage_is_a_clear_config_error(tmp_path):
    (tmp_path / "c.yaml").write_text("arihpc:\n  planning:\n    failure-rates:\n"
                                     "      tclean: {rate: 0.1, stage: imaging}\n")
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "c.yaml"), "plan",
                                       "--machines", "1", "--runs", "2"])
    assert result.exit_code == 1
    assert "failure-rates: stage(s) imaging not in stage-fractions" in result.output
