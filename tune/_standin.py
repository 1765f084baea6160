"""A private stand-in for tune-search's BasicVariantGenerator and FIFOScheduler, used until that
branch is merged (then this file goes)."""
import itertools
class BasicVariantGenerator:
    def __init__(self, random_state=None, max_concurrent=0):
        self._configs = []; self._given = 0
    def set_search_properties(self, metric, mode, config, **spec):
        grids = [(k, v["grid_search"]) for k, v in config.items() if isinstance(v, dict) and "grid_search" in v]
        for _ in range(spec.get("num_samples", 1)):
            for combo in itertools.product(*[v for _, v in grids]) if grids else [()]:
                c = {k: (v.sample() if hasattr(v, "sample") else v) for k, v in config.items()}
                c.update({k: x for (k, _), x in zip(grids, combo)})
                self._configs.append(c)
        self.total_samples = len(self._configs)
        return True
    def suggest(self, trial_id):
        if self._given >= len(self._configs): return "FINISHED"
        self._given += 1; return self._configs[self._given - 1]
    def on_trial_result(self, trial_id, result): pass
    def on_trial_complete(self, trial_id, result=None, error=False): pass
    def get_state(self): return {"given": self._given, "configs": self._configs}
    def set_state(self, state): self._given = state["given"]; self._configs = state["configs"]
class FIFOScheduler:
    def set_search_properties(self, metric, mode, **spec): return True
    def on_trial_add(self, c, t): pass
    def on_trial_error(self, c, t): pass
    def on_trial_result(self, c, t, r): return "CONTINUE"
    def on_trial_complete(self, c, t, r): pass
    def on_trial_remove(self, c, t): pass
    def choose_trial_to_run(self, c):
        for t in c.get_trials():
            if t.status.value in ("PENDING", "PAUSED"): return t
        return None
    def get_state(self): return {}
    def set_state(self, s): pass
def grid_search(values): return {"grid_search": list(values)}
