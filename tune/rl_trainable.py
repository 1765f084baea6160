"""`tune.Tuner("PPO", param_space={"env": "CartPole-v1", "lr": tune.loguniform(...)})`: an rl
algorithm, found by name in pyactor.rl's registry, run as a class trainable.

Each trial builds the algorithm's config from its own config (the param_space keys are the
config's fields; an unknown key fails the trial with the rl config's message naming it), calls
train() once per step, and saves/restores through the algorithm's checkpoints. The algorithm
starts env-runner actors of its own, so the trial actor asks the node for no CPU itself while
the controller counts the whole trial (1 CPU for the learner plus the runners' CPUs) when it
decides how many trials fit.
"""

from __future__ import annotations

import os

from pyactor.tune.trainable import Trainable


def algorithm_trainable(name: str) -> type:
    try:
        from pyactor.rl.config import get_config_class
    except ImportError as error:
        raise ImportError(f"tune.Tuner({name!r}) runs a pyactor.rl algorithm, which needs the rl "
                          f"extra: pip install 'pyactor[rl]' ({error})") from error
    config_class = get_config_class(name)      # ValueError naming the registered ones

    class AlgorithmTrainable(Trainable):
        algorithm_config_class = config_class
        actor_resources = {"CPU": 0}     # the runners hold the CPUs the controller counted

        def setup(self, config: dict) -> None:
            from pyactor import tune
            changes = dict(config)
            changes.setdefault("output", os.path.join(tune.get_trial_dir() or ".", "rl"))
            changes.setdefault("log_to_tensorboard", False)   # the trial's own logger does it
            self.algorithm = config_class().replace(**changes).build()

        def step(self) -> dict:
            return self.algorithm.train()

        def save_checkpoint(self, checkpoint_dir: str) -> None:
            self.algorithm.save(checkpoint_dir)

        def load_checkpoint(self, checkpoint) -> None:
            self.algorithm.stop()
            self.algorithm = type(self.algorithm).from_checkpoint(checkpoint)

        def cleanup(self) -> None:
            self.algorithm.stop()

        @staticmethod
        def default_resource_request(config: dict) -> dict:
            defaults = config_class()
            runners = config.get("num_env_runners", defaults.num_env_runners)
            per_runner = config.get("num_cpus_per_env_runner", defaults.num_cpus_per_env_runner)
            gpus = config.get("num_gpus_per_learner", defaults.num_gpus_per_learner)
            return {"CPU": 1 + runners * per_runner, "GPU": gpus}

    AlgorithmTrainable.__name__ = AlgorithmTrainable.__qualname__ = name
    return AlgorithmTrainable
