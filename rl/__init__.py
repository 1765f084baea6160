"""pyactor.rl: reinforcement learning as async actor pipelines (gymnasium environments in rollout
actors, a torch learner). Its modules arrive with the RL issue; see the README's layout."""
