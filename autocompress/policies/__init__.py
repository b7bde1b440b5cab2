"""What proposes compression policies: RL agents (SB3) and heuristics behind one interface."""

from __future__ import annotations

from autocompress.policies._amc import (
    AMCDDPG,
    EpisodeRewardReplayBuffer,
    TruncatedNormalActionNoise,
)
from autocompress.policies.base import (
    BaseAgent,
    EpisodeCallback,
    agent_class,
    create_agent,
    list_agents,
    load_agent,
    register_agent,
)
from autocompress.policies.heuristics import (
    GreedyAgent,
    RandomAgent,
    UniformAgent,
    bisect_scale,
    greedy_allocate,
)
from autocompress.policies.sb3_agents import DDPGAgent, PPOAgent, SACAgent, SB3Agent, TD3Agent

__all__ = [
    "AMCDDPG",
    "BaseAgent",
    "DDPGAgent",
    "EpisodeCallback",
    "EpisodeRewardReplayBuffer",
    "GreedyAgent",
    "PPOAgent",
    "RandomAgent",
    "SACAgent",
    "SB3Agent",
    "TD3Agent",
    "TruncatedNormalActionNoise",
    "UniformAgent",
    "agent_class",
    "bisect_scale",
    "create_agent",
    "greedy_allocate",
    "list_agents",
    "load_agent",
    "register_agent",
]
