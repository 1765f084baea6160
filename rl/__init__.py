"""pyactor.rl: reinforcement learning as async actor pipelines (RLlib-like API).

    from pyactor import rl
    algo = rl.PPOConfig(env="CartPole-v1", seed=0).build()
    async for result in algo.results(stop={"episode_return_mean": 475}): ...

Modules: envs (env specs -> vector envs), module (torch networks), rollout (env-runner actors),
learner (model + optimiser), config / algorithm (the driver loop, results, checkpoints), logger
(run directory), one file per algorithm (ppo), cli (`pyactor rl ...`). Names load on first use, so
`from pyactor import rl` does not import torch or gymnasium until something needs them.
"""

from __future__ import annotations

from pyactor._private.lazy_exports import lazy_exports

_EXPORTS = {
    "Algorithm": "pyactor.rl.algorithm", "AlgorithmConfig": "pyactor.rl.config",
    "ALGORITHMS": "pyactor.rl.config", "get_config_class": "pyactor.rl.config",
    "PPO": "pyactor.rl.ppo", "PPOConfig": "pyactor.rl.ppo",
    "DQN": "pyactor.rl.dqn", "DQNConfig": "pyactor.rl.dqn",
    "ES": "pyactor.rl.es", "ESConfig": "pyactor.rl.es",
    "ARS": "pyactor.rl.ars", "ARSConfig": "pyactor.rl.ars",
    "A2C": "pyactor.rl.a2c", "A2CConfig": "pyactor.rl.a2c",
    "ApexDQN": "pyactor.rl.apex", "ApexDQNConfig": "pyactor.rl.apex",
    "A3C": "pyactor.rl.a3c", "A3CConfig": "pyactor.rl.a3c",
    "IMPALA": "pyactor.rl.impala", "IMPALAConfig": "pyactor.rl.impala",
    "APPO": "pyactor.rl.appo", "APPOConfig": "pyactor.rl.appo",
    "vtrace": "pyactor.rl.vtrace",
    "SAC": "pyactor.rl.sac", "SACConfig": "pyactor.rl.sac",
    "DDPG": "pyactor.rl.ddpg", "DDPGConfig": "pyactor.rl.ddpg",
    "TD3": "pyactor.rl.td3", "TD3Config": "pyactor.rl.td3",
    "register_env": "pyactor.rl.envs", "make_vector_env": "pyactor.rl.envs",
    "EnvError": "pyactor.rl.envs",
    "RLModule": "pyactor.rl.module", "ActorCriticModule": "pyactor.rl.module",
    "EnvRunner": "pyactor.rl.rollout", "EnvRunnerGroup": "pyactor.rl.rollout",
    "Learner": "pyactor.rl.learner",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
