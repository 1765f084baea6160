"""Each scheduler driven by scripted results, without processes: the decisions it returns."""

from __future__ import annotations

import logging
import pathlib
import pickle
import random
import re

import pytest

from pyactor.tune import search
from pyactor.tune.schedulers import (ASHAScheduler, Exploit, FIFOScheduler, HyperBandScheduler,
                                     MedianStoppingRule, PopulationBasedTraining, TrialScheduler)
from pyactor.tune.schedulers.pbt import explore
from pyactor.tune.trial import Trial, TrialStatus

CONTINUE, PAUSE, STOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP


class Controller:
    """The read-only view a scheduler gets, plus what a test needs to script trials."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.trials: list[Trial] = []

    def get_trials(self):
        return list(self.trials)

    def add(self, trial_id, config=None, status=TrialStatus.RUNNING):
        trial = Trial(trial_id, dict(config or {}), status=status)
        self.trials.append(trial)
        self.scheduler.on_trial_add(self, trial)
        return trial

    def trial(self, trial_id):
        return next(t for t in self.trials if t.trial_id == trial_id)

    def report(self, trial_id, t, value, time_attr="training_iteration", metric="score"):
        trial = self.trial(trial_id)
        result = {time_attr: t, metric: value}
        trial.last_result = result
        decision = self.scheduler.on_trial_result(self, trial, result)
        if decision == PAUSE:
            trial.status = TrialStatus.PAUSED
        return decision

    def complete(self, trial_id):
        trial = self.trial(trial_id)
        trial.status = TrialStatus.TERMINATED
        self.scheduler.on_trial_complete(self, trial, trial.last_result)


def restored(scheduler, factory):
    """A new scheduler given the pickled state of `scheduler`."""
    fresh = factory()
    fresh.set_state(pickle.loads(pickle.dumps(scheduler.get_state())))
    return fresh


# --- FIFO ---------------------------------------------------------------------------------------

def test_fifo_continues_and_runs_pending_before_paused_in_creation_order():
    """FIFO always says CONTINUE and picks the first PENDING trial, then the first PAUSED one."""
    controller = Controller(FIFOScheduler())
    a = controller.add("a", status=TrialStatus.PAUSED)
    controller.add("b", status=TrialStatus.RUNNING)
    c = controller.add("c", status=TrialStatus.PENDING)
    controller.add("d", status=TrialStatus.PENDING)
    assert controller.report("b", 1, 0.0) == CONTINUE
    assert controller.scheduler.choose_trial_to_run(controller) is c
    c.status = controller.trial("d").status = TrialStatus.RUNNING
    assert controller.scheduler.choose_trial_to_run(controller) is a
    a.status = TrialStatus.TERMINATED
    assert controller.scheduler.choose_trial_to_run(controller) is None
    copy = restored(FIFOScheduler("loss", "min"), FIFOScheduler)
    assert (copy.metric, copy.mode) == ("loss", "min")


# --- ASHA ---------------------------------------------------------------------------------------

def asha(**kwargs):
    return ASHAScheduler(metric="score", mode="max", **kwargs)


def test_asha_defaults_put_rungs_at_1_4_16_64():
    """max_t=100, grace_period=1, reduction_factor=4: rungs at 1, 4, 16, 64."""
    assert list(asha().rung_scores()) == [1, 4, 16, 64]
    assert list(asha(max_t=81, reduction_factor=3).rung_scores()) == [1, 3, 9, 27, 81]


def test_asha_stops_a_trial_below_the_rung_quantile_of_those_before_it():
    """At a rung, a trial below the 1 - 1/rf quantile of the scores recorded before it stops;
    the first one there always goes on."""
    controller = Controller(asha())
    for name in "abcd":
        controller.add(name)
    assert controller.report("a", 1, 1.0) == CONTINUE      # first at the rung
    assert controller.report("b", 1, 0.5) == STOP          # 75th pct of [1.0] is 1.0
    assert controller.report("c", 1, 2.0) == CONTINUE      # 75th pct of [1.0, 0.5] is 0.875
    assert controller.report("d", 1, 0.9) == STOP          # 75th pct of [1, .5, 2] is 1.5
    assert controller.scheduler.rung_scores()[1] == {"a": 1.0, "b": 0.5, "c": 2.0, "d": 0.9}


def test_asha_judges_only_at_rungs_and_once_per_rung():
    """Between rungs every result continues; each rung judges a trial once, at the highest rung
    reached (a trial that skipped a rung is recorded at the next one only)."""
    controller = Controller(asha())
    for name in "ab":
        controller.add(name)
    assert controller.report("a", 1, 10.0) == CONTINUE
    assert [controller.report("a", t, 10.0) for t in (2, 3)] == [CONTINUE, CONTINUE]
    assert controller.report("a", 4, 10.0) == CONTINUE       # first at rung 4
    assert controller.report("b", 5, 1.0) == STOP            # judged at rung 4 against a
    rungs = controller.scheduler.rung_scores()
    assert "b" not in rungs[1] and rungs[4] == {"a": 10.0, "b": 1.0}


def test_asha_min_mode_prefers_lower_values():
    """In min mode a larger loss is the worse one."""
    scheduler = ASHAScheduler(metric="loss", mode="min")
    controller = Controller(scheduler)
    controller.add("a")
    controller.add("b")
    controller.add("c")
    assert controller.report("a", 1, 0.1, metric="loss") == CONTINUE
    assert controller.report("b", 1, 5.0, metric="loss") == STOP
    assert controller.report("c", 1, 0.01, metric="loss") == CONTINUE


def test_asha_stops_every_trial_at_max_t():
    """A trial reaching max_t is stopped, however good."""
    controller = Controller(asha(max_t=10))
    controller.add("a")
    assert controller.report("a", 9, 100.0) == CONTINUE
    assert controller.report("a", 10, 100.0) == STOP


def test_asha_promotes_about_one_in_rf_per_rung_over_a_population():
    """Over 64 trials with random scores, fewer pass each rung (about 1/rf once the rung has
    filled: the first arrivals pass freely), and the best trial passes every rung."""
    rng = random.Random(0)
    controller = Controller(asha())
    survivors = {1: 0, 4: 0}
    for i in range(64):
        controller.add(f"t{i}")
    alive = [f"t{i}" for i in range(64)]
    quality = {tid: rng.random() for tid in alive}
    for rung in (1, 4):
        alive = [tid for tid in alive if controller.report(tid, rung, quality[tid]) == CONTINUE]
        survivors[rung] = len(alive)
    assert 10 <= survivors[1] <= 26 and 2 <= survivors[4] <= 12
    assert max(quality, key=quality.get) in alive


def test_asha_with_several_brackets_places_trials_reproducibly():
    """brackets=3: each trial's bracket depends only on its id, and all brackets get trials."""
    placements = []
    for _ in range(2):
        scheduler = asha(brackets=3)
        controller = Controller(scheduler)
        for i in range(60):
            controller.add(f"t{i}")
        placements.append(dict(scheduler._bracket_of))
    assert placements[0] == placements[1] and set(placements[0].values()) == {0, 1, 2}
    assert list(asha(brackets=3).rung_scores(2)) == [16, 64]


def test_asha_result_without_the_metric_is_a_clear_error_at_once():
    """The first result lacking the metric raises, naming the metric and the keys seen."""
    controller = Controller(asha())
    trial = controller.add("a")
    with pytest.raises(ValueError, match=r"no 'score'.*keys are: loss, training_iteration"):
        controller.scheduler.on_trial_result(controller, trial,
                                             {"training_iteration": 1, "loss": 0.3})


def test_a_scheduler_without_metric_or_mode_refuses_its_first_trial():
    """ASHA with no metric/mode (none given and none set by the Tuner) raises on the first trial."""
    controller = Controller(ASHAScheduler())
    with pytest.raises(ValueError, match="needs a metric and a mode"):
        controller.add("a")


def test_set_search_properties_fills_in_and_refuses_conflicts():
    """The experiment's metric/mode fill in what a scheduler lacks; a conflicting one is refused
    (False), and a bad mode raises."""
    scheduler = ASHAScheduler()
    assert scheduler.set_search_properties("score", "max")
    assert (scheduler.metric, scheduler.mode) == ("score", "max")
    assert not scheduler.set_search_properties("loss", "min")
    with pytest.raises(ValueError, match="'min' or 'max'"):
        ASHAScheduler().set_search_properties("score", "maximise")
    with pytest.raises(ValueError, match="'min' or 'max'"):
        ASHAScheduler(metric="score", mode="up")


def scripted_run(steps, controller, seed):
    """Reports from `steps` random (trial, time, value) triples; the decisions."""
    rng = random.Random(seed)
    decisions = []
    for _ in range(steps):
        live = [t for t in controller.trials if t.status == TrialStatus.RUNNING]
        if not live:
            break
        trial = rng.choice(live)
        t = trial.last_result.get("training_iteration", 0) + rng.choice((1, 2, 3))
        decision = controller.report(trial.trial_id, t, rng.random())
        if decision == STOP:
            controller.complete(trial.trial_id)
        decisions.append((trial.trial_id, decision))
    return decisions


def assert_restored_decides_the_same(make, trials, seeds):
    """Scripted results before and after a get_state/set_state into a fresh scheduler give the
    same decisions as the scheduler that never stopped."""
    original = Controller(make())
    for i in range(trials):
        original.add(f"t{i}")
    scripted_run(2 * trials, original, seed=seeds[0])
    copy_controller = Controller(restored(original.scheduler, make))
    copy_controller.trials = [Trial(t.trial_id, t.config, t.status, dict(t.last_result))
                              for t in original.trials]
    after = scripted_run(3 * trials, original, seed=seeds[1])
    assert after == scripted_run(3 * trials, copy_controller, seed=seeds[1])
    assert STOP in [decision for _, decision in after]


def test_asha_restored_from_its_state_decides_as_one_that_never_stopped():
    """get_state/set_state mid-run: the restored ASHA makes the same next decisions."""
    assert_restored_decides_the_same(lambda: asha(max_t=30, reduction_factor=3), 20, (1, 2))


# --- HyperBand ----------------------------------------------------------------------------------

def hyperband(**kwargs):
    return HyperBandScheduler(metric="score", mode="max", **kwargs)


def test_hyperband_bracket_sizes_and_first_milestones_follow_the_paper():
    """max_t=81, eta=3: 5 brackets of 5, 8, 15, 34, 81 trials starting at 81, 27, 9, 3, 1."""
    scheduler = hyperband()
    assert [scheduler.bracket_size(s) for s in range(5)] == [5, 8, 15, 34, 81]
    assert [scheduler.first_milestone(s) for s in range(5)] == [81, 27, 9, 3, 1]
    controller = Controller(scheduler)
    for i in range(5 + 8 + 15 + 34 + 81 + 1):
        controller.add(f"t{i}")
    bands = scheduler.brackets()
    assert [len(b.all_trials) for b in bands[0]] == [5, 8, 15, 34, 81]
    assert len(bands) == 2 and len(bands[1][0].all_trials) == 1   # a new band begins


def fill_small_hyperband():
    """max_t=9, eta=3: bracket 0 holds 3 trials (run to 9), bracket 1 holds 5 (milestone 3)."""
    scheduler = hyperband(max_t=9)
    controller = Controller(scheduler)
    for i in range(3):
        controller.add(f"full{i}")
    for name in "abcde":
        controller.add(name)
    return scheduler, controller


def test_hyperband_pauses_at_the_milestone_then_halves_the_bracket():
    """Trials pause at the milestone until all are there; then the best ceil(5/3)=2 go on and
    the rest stop (the reporting trial directly, paused losers through a resume then STOP)."""
    scheduler, controller = fill_small_hyperband()
    scores = {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.3, "e": 0.7}
    for name in "abcde":
        assert [controller.report(name, t, scores[name]) for t in (1, 2)] == [CONTINUE] * 2
    for name in "abcd":
        assert controller.report(name, 3, scores[name]) == PAUSE
    assert controller.report("e", 3, scores["e"]) == CONTINUE    # e is among the best two
    # The paused losers a, c, d come back first, to be stopped at their next result.
    losers = []
    while (trial := scheduler.choose_trial_to_run(controller)) is not None and \
            trial.trial_id in "acd":
        trial.status = TrialStatus.RUNNING
        losers.append(trial.trial_id)
        assert controller.report(trial.trial_id, 4, 0.0) == STOP
        controller.complete(trial.trial_id)
    assert sorted(losers) == ["a", "c", "d"]
    assert trial.trial_id == "b"                  # the paused winner is resumed
    trial.status = TrialStatus.RUNNING
    assert controller.report("b", 4, 0.9) == CONTINUE
    assert controller.report("b", 9, 0.9) == STOP              # max_t reached
    assert controller.report("e", 9, 0.7) == STOP


def test_hyperband_hands_paused_losers_to_a_controller_that_asks():
    """trials_to_stop() gives the paused losers once; choose_trial_to_run then offers only the
    paused winner."""
    scheduler, controller = fill_small_hyperband()
    for name, score in zip("abcde", (0.1, 0.9, 0.5, 0.3, 0.7)):
        controller.report(name, 3, score)
    losers = scheduler.trials_to_stop(controller)
    assert sorted(t.trial_id for t in losers) == ["a", "c", "d"]
    assert scheduler.trials_to_stop(controller) == []
    for trial in losers:
        controller.complete(trial.trial_id)
    assert scheduler.choose_trial_to_run(controller).trial_id == "b"
    assert FIFOScheduler().trials_to_stop(controller) == []


def test_hyperband_first_bracket_runs_its_trials_to_max_t():
    """Bracket 0 never halves: its trials continue until max_t, then stop."""
    scheduler, controller = fill_small_hyperband()
    assert [controller.report("full0", t, 0.1) for t in range(1, 9)] == [CONTINUE] * 8
    assert controller.report("full0", 9, 0.1) == STOP


def test_hyperband_halves_when_a_straggler_leaves():
    """A trial ending early (completed or errored) no longer holds the bracket's halving back."""
    scheduler, controller = fill_small_hyperband()
    for name, score in zip("abcd", (0.1, 0.9, 0.5, 0.3)):
        assert controller.report(name, 3, score) == PAUSE
    controller.trial("e").status = TrialStatus.ERROR
    scheduler.on_trial_error(controller, controller.trial("e"))
    winners = set()
    while (trial := scheduler.choose_trial_to_run(controller)) is not None:
        trial.status = TrialStatus.RUNNING
        if controller.report(trial.trial_id, 4, 0.0) == STOP:
            controller.complete(trial.trial_id)
        else:
            winners.add(trial.trial_id)
    assert winners == {"b", "c"}


def test_hyperband_restored_from_its_state_decides_as_one_that_never_stopped():
    """get_state/set_state mid-bracket: the same decisions and the same trial choices after."""
    scheduler, controller = fill_small_hyperband()
    for name, score in zip("abc", (0.1, 0.9, 0.5)):
        controller.report(name, 3, score)
    copy_scheduler = restored(scheduler, lambda: hyperband(max_t=9))
    copy_controller = Controller(copy_scheduler)
    copy_controller.trials = [Trial(t.trial_id, t.config, t.status) for t in controller.trials]
    for each in (controller, copy_controller):
        assert each.report("d", 3, 0.3) == PAUSE
        assert each.report("e", 3, 0.7) == CONTINUE
    assert scheduler.choose_trial_to_run(controller).trial_id == \
        copy_scheduler.choose_trial_to_run(copy_controller).trial_id
    assert scheduler.debug_string() == copy_scheduler.debug_string()


# --- MedianStoppingRule -------------------------------------------------------------------------

def median_rule(**kwargs):
    kwargs.setdefault("grace_period", 0)
    kwargs.setdefault("min_samples_required", 2)
    return MedianStoppingRule(time_attr="training_iteration", metric="score", mode="max",
                              **kwargs)


def test_median_rule_stops_a_trial_whose_best_is_below_the_median_of_running_means():
    """A trial's best so far is compared with the median, over the others that reached the same
    time, of their running means up to that time."""
    controller = Controller(median_rule())
    for name in "abcd":
        controller.add(name)
    for t, (a, b) in enumerate([(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)], start=1):
        controller.report("a", t, a)
        controller.report("b", t, b)
    # Running means at t=2: a 2.0, b 3.0 -> median 2.5.
    assert controller.report("c", 1, 2.4) == CONTINUE     # at t=1: means 1.0, 2.0 -> 1.5
    assert controller.report("c", 2, 2.4) == STOP         # best 2.4 < 2.5
    assert controller.report("d", 2, 2.6) == CONTINUE


def test_median_rule_waits_for_enough_samples_and_the_grace_period():
    """Before grace_period, or with fewer than min_samples_required others, a trial continues."""
    controller = Controller(median_rule(grace_period=5, min_samples_required=3))
    for name in "abc":
        controller.add(name)
    controller.report("a", 6, 10.0)
    controller.report("b", 6, 10.0)
    assert controller.report("c", 4, -100.0) == CONTINUE    # within the grace period
    assert controller.report("c", 6, -100.0) == CONTINUE    # only 2 others: too few


def test_median_rule_pauses_instead_when_not_hard_stop():
    """hard_stop=False turns the stop into a pause, and keeps pausing that trial."""
    controller = Controller(median_rule(hard_stop=False))
    for name in "abc":
        controller.add(name)
    controller.report("a", 1, 5.0)
    controller.report("b", 1, 5.0)
    assert controller.report("c", 1, 0.0) == PAUSE
    assert controller.report("c", 2, 9.0) == PAUSE


def test_median_rule_forgets_results_superseded_by_a_restore():
    """A trial reporting an earlier time again (restored from a checkpoint) replaces the
    results after that time in its running mean."""
    controller = Controller(median_rule(min_samples_required=1))
    for name in "ab":
        controller.add(name)
    for t, score in ((1, 0.0), (2, 0.0), (3, 100.0)):
        controller.report("a", t, score)
    controller.report("a", 2, 10.0)                 # back to t=2: the 100.0 is gone
    assert controller.scheduler._running_mean("a", 3) == pytest.approx(5.0)
    assert controller.report("b", 2, 4.0) == STOP    # best 4.0 < a's running mean 5.0
    assert controller.scheduler._history["a"]["best"] == 10.0


def test_median_rule_restored_from_its_state_decides_the_same():
    """get_state/set_state: the restored rule gives the same decisions on the same results."""
    assert_restored_decides_the_same(lambda: median_rule(min_samples_required=3), 10, (3, 4))


# --- PopulationBasedTraining --------------------------------------------------------------------

def pbt(**kwargs):
    kwargs.setdefault("hyperparam_mutations", {"lr": search.uniform(1e-4, 1.0),
                                               "batch": [16, 32, 64, 128]})
    return PopulationBasedTraining(time_attr="training_iteration", metric="score", mode="max",
                                   perturbation_interval=5, seed=0, **kwargs)


def pbt_population(scheduler, n=8):
    controller = Controller(scheduler)
    for i in range(n):
        trial = controller.add(f"t{i}", {"lr": 0.01 * (i + 1), "batch": 32, "other": "x"})
        trial.checkpoint = f"ckpt-{i}"
    return controller


def test_pbt_quantiles_split_the_population_by_score():
    """With 8 scored trials and quantile_fraction=0.25: the worst 2 and the best 2."""
    controller = pbt_population(pbt())
    for i in range(8):
        controller.report(f"t{i}", 5, float(i))
    lower, upper = controller.scheduler.quantiles(controller)
    assert [t.trial_id for t in lower] == ["t0", "t1"]
    assert [t.trial_id for t in upper] == ["t6", "t7"]


def test_pbt_bottom_trial_exploits_a_top_trial_with_a_perturbed_config():
    """A bottom-quantile trial at the perturbation interval gets Exploit(source in the top
    quantile, config = the source's config with lr x1.2 or x0.8 and batch moved to a
    neighbour); other keys are kept; the decision is logged."""
    controller = pbt_population(pbt(resample_probability=0.0))
    for i in range(1, 8):
        assert controller.report(f"t{i}", 5, float(i)) in (CONTINUE, PAUSE)
    decision = controller.report("t0", 5, -1.0)
    assert isinstance(decision, Exploit)
    assert decision.source.trial_id in ("t6", "t7")
    source_lr = decision.source.config["lr"]
    assert decision.config["lr"] in (pytest.approx(source_lr * 1.2), pytest.approx(source_lr * 0.8))
    assert decision.config["batch"] in (16, 64) and decision.config["other"] == "x"
    logged = controller.scheduler.decisions[-1]
    assert (logged["trial_id"], logged["source_id"]) == ("t0", decision.source.trial_id)
    assert logged["new_config"] == decision.config


def test_pbt_top_and_middle_trials_do_not_exploit():
    """Trials outside the bottom quantile continue (or pause to let waiting trials run)."""
    controller = pbt_population(pbt())
    for i in range(8):
        assert not isinstance(controller.report(f"t{i}", 5, float(i)), Exploit) or i < 2
    for i in range(2, 8):
        assert controller.report(f"t{i}", 10, float(i)) in (CONTINUE, PAUSE)


def test_pbt_perturbs_only_every_interval_and_after_burn_in():
    """Within the perturbation interval or the burn-in a bottom trial just continues."""
    controller = pbt_population(pbt(burn_in_period=10))
    for i in range(8):
        assert controller.report(f"t{i}", 4, float(i)) == CONTINUE      # before the interval
    for i in range(8):
        assert controller.report(f"t{i}", 6, float(i)) == CONTINUE      # in the burn-in
    for i in range(1, 8):
        controller.report(f"t{i}", 11, float(i))
    assert isinstance(controller.report("t0", 11, 0.0), Exploit)


def test_pbt_does_not_exploit_a_source_without_a_checkpoint():
    """With no checkpoint to copy, the bottom trial continues."""
    controller = pbt_population(pbt())
    for trial in controller.trials:
        trial.checkpoint = None
    for i in range(8):
        assert not isinstance(controller.report(f"t{i}", 5, float(i)), Exploit)


def test_pbt_pauses_a_trial_when_others_wait_to_run():
    """After a perturbation step, a trial yields if another trial is pending."""
    controller = pbt_population(pbt(), n=4)
    controller.add("waiting", {"lr": 0.1, "batch": 16}, status=TrialStatus.PENDING)
    assert controller.report("t3", 5, 10.0) == PAUSE
    assert controller.scheduler.choose_trial_to_run(controller).trial_id == "waiting"


def test_pbt_explore_resamples_with_the_resample_probability():
    """explore() resamples about resample_probability of the time, else multiplies by one of the
    perturbation factors (each about half of the rest)."""
    rng = random.Random(5)
    mutations = {"lr": search.uniform(0.0, 100.0)}
    outcomes = [explore({"lr": 50.0}, mutations, 0.25, (1.2, 0.8), rng)["lr"]
                for _ in range(4000)]
    up = sum(v == pytest.approx(60.0) for v in outcomes) / 4000
    down = sum(v == pytest.approx(40.0) for v in outcomes) / 4000
    resampled = 1 - up - down
    assert abs(resampled - 0.25) < 0.03 and abs(up - 0.375) < 0.03 and abs(down - 0.375) < 0.03


def test_pbt_explore_moves_list_values_to_a_neighbour_and_keeps_ints_and_bounds():
    """A list value moves one step (clipped at the ends); an int stays an int; a perturbed
    value stays within its domain's bounds; nested mutations apply to nested keys."""
    rng = random.Random(1)
    for _ in range(200):
        new = explore({"b": 16, "n": 10, "x": 0.95, "opt": {"m": 0.5}},
                      {"b": [16, 32, 64], "n": search.randint(1, 100),
                       "x": search.uniform(0, 1.0), "opt": {"m": search.uniform(0, 1)}},
                      0.0, (1.2, 0.8), rng)
        assert new["b"] in (16, 32) and new["n"] in (12, 8) and type(new["n"]) is int
        assert new["x"] in (pytest.approx(0.76), 1.0)
        assert new["opt"]["m"] in (pytest.approx(0.6), pytest.approx(0.4))


def test_pbt_custom_explore_fn_runs_after_the_mutations():
    """custom_explore_fn gets the mutated config and its return is the new config."""
    scheduler = pbt(custom_explore_fn=lambda c: {**c, "lr": 0.5}, resample_probability=0.0)
    controller = pbt_population(scheduler)
    for i in range(1, 8):
        controller.report(f"t{i}", 5, float(i))
    assert controller.report("t0", 5, -1.0).config["lr"] == 0.5


def test_pbt_trial_missing_a_mutated_key_is_refused_when_added():
    """A trial whose config lacks a key of hyperparam_mutations raises at on_trial_add."""
    controller = Controller(pbt())
    with pytest.raises(ValueError, match="has no 'batch'"):
        controller.add("t0", {"lr": 0.1})


@pytest.mark.parametrize("kwargs, message", [
    ({"hyperparam_mutations": {}}, "needs hyperparam_mutations or custom_explore_fn"),
    ({"quantile_fraction": 0.6}, "quantile_fraction must be in"),
    ({"hyperparam_mutations": {"lr": 3}}, "must be a list, a dict"),
    ({"hyperparam_mutations": {"lr": search.sample_from(lambda: 1)}}, "sample_from"),
])
def test_pbt_bad_arguments_are_refused(kwargs, message):
    """PBT's constructor explains each bad argument."""
    with pytest.raises((TypeError, ValueError), match=message):
        pbt(**kwargs)


def test_pbt_logs_its_decisions(caplog):
    """Each exploit is written to the log with both trials and the new values."""
    controller = pbt_population(pbt())
    with caplog.at_level(logging.INFO, logger="pyactor.tune.schedulers.pbt"):
        for i in range(1, 8):
            controller.report(f"t{i}", 5, float(i))
        controller.report("t0", 5, -1.0)
    assert "[pbt] exploit: t0" in caplog.text


def test_pbt_restored_from_its_state_decides_the_same():
    """get_state/set_state (RNG included): the same exploits with the same configs after."""
    original = pbt_population(pbt())
    for i in range(8):
        original.report(f"t{i}", 5, float(i))
    copy_controller = Controller(restored(original.scheduler, pbt))
    copy_controller.trials = original.trials
    outcomes = []
    for each in (original, copy_controller):
        decisions = [each.report(f"t{i}", 10, float(7 - i)) for i in range(8)]
        outcomes.append([(d.source.trial_id, d.config) if isinstance(d, Exploit) else d
                         for d in decisions])
    assert outcomes[0] == outcomes[1]
    assert any(isinstance(d, tuple) for d in outcomes[0])


# --- the guide's example ------------------------------------------------------------------------

def test_the_guides_scheduler_in_a_page_works_as_written():
    """docs/tune-search.md's StopFarBehind and its test run as printed, and it resumes."""
    guide = pathlib.Path(__file__).parents[2] / "docs" / "tune-search.md"
    text = guide.read_text().split("<!-- the test suite runs this block", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)[:2]
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(guide), "exec"), namespace)
    make = lambda: namespace["StopFarBehind"](metric="loss", mode="min", check_at=2, margin=0.5)
    controller = Controller(make())
    for name in "abc":
        controller.add(name)
    assert controller.report("a", 2, 1.0, metric="loss") == CONTINUE
    copy_controller = Controller(restored(controller.scheduler, make))
    copy_controller.trials = controller.trials
    for each in (controller, copy_controller):
        assert each.report("b", 2, 1.6, metric="loss") == STOP
        assert each.report("c", 2, 1.4, metric="loss") == CONTINUE
    with pytest.raises(ValueError, match="no 'loss'"):
        controller.report("c", 2, 0.1, metric="acc")


# --- every scheduler, in a whole simulated experiment -------------------------------------------

def run_experiment(scheduler, trials, slots, seed, max_t=27, ask_for_stops=False):
    """Run `trials` in-process trials through `scheduler` with `slots` running at once, as the
    controller does; (iterations run, trial statuses). Fails if the experiment never ends."""
    rng = random.Random(seed)
    quality = {f"t{i}": rng.random() for i in range(trials)}
    controller = Controller(scheduler)
    for trial_id in quality:
        controller.add(trial_id, {"lr": 0.1, "batch": 32}, status=TrialStatus.PENDING)
    iterations = 0
    for _ in range(trials * max_t * 3):
        if ask_for_stops:
            for trial in scheduler.trials_to_stop(controller):
                controller.complete(trial.trial_id)
        running = [t for t in controller.trials if t.status == TrialStatus.RUNNING]
        while len(running) < slots and (trial := scheduler.choose_trial_to_run(controller)):
            trial.status = TrialStatus.RUNNING
            running.append(trial)
        if not running:
            return iterations, [t.status for t in controller.trials]
        for trial in running:
            t = trial.last_result.get("training_iteration", 0) + 1
            iterations += 1
            decision = controller.report(trial.trial_id, t, quality[trial.trial_id] * t
                                         + rng.gauss(0, 0.1))
            trial.checkpoint = t
            if decision == STOP or t >= max_t:
                controller.complete(trial.trial_id)
    raise AssertionError(f"the experiment did not end: {scheduler.debug_string()}")


SCHEDULERS = {
    "fifo": lambda: FIFOScheduler("score", "max"),
    "asha": lambda: asha(max_t=27, reduction_factor=3),
    "hyperband": lambda: hyperband(max_t=27),
    "median": lambda: median_rule(),
    "pbt": lambda: pbt(),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("trials, slots, seed", [(1, 1, 0), (7, 2, 1), (20, 4, 2), (40, 8, 3)])
def test_every_scheduler_brings_an_experiment_to_its_end(name, trials, slots, seed):
    """With any number of trials and slots, every trial ends TERMINATED and no more iterations
    are run than all trials to max_t (HyperBand: plus one for each paused loser)."""
    for ask in (False, True):
        iterations, statuses = run_experiment(SCHEDULERS[name](), trials, slots, seed,
                                              ask_for_stops=ask)
        assert statuses == [TrialStatus.TERMINATED] * trials
        assert iterations <= trials * 27 + (trials if name == "hyperband" else 0)
        if name in ("asha", "hyperband", "median") and trials >= 20:
            assert iterations < trials * 27 * 0.8          # early stopping saved some budget
