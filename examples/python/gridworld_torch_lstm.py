"""A PyTorch LSTM agent on the paper's gridworld, scored against the exact Bayes-optimal agent.

What it trains: a small torch LSTM agent (nn.LSTM with 64 units -> policy and value heads) on
``lvrnn/GridWorld-v0`` (5 x 5, start and goal uniform and distinct, the goal never observed;
one task is T = 100 interactions in inner episodes of 15 steps, each ending when the goal is
reached, reward 1, or after 15 steps, the agent back on its start), through its Gymnasium vector
environment (64 tasks stepped together in one Rust call). At each step the agent sees its
position (one-hot row and column), its previous action, the previous reward and whether the
previous step ended an inner episode (``info["inner_done"]``). Training: advantage actor-critic
(REINFORCE on discounted returns-to-go with a learned value baseline and an entropy bonus)
for --seconds of wall time.

What it compares: the trained agent's return over the 100 interactions on 256 test tasks (seed
--seed) beside the exact references on the very same tasks (``lvrnn.references``): the
Bayes-optimal agent (exact search over the whole horizon; its expected return over all tasks is
22421/600 = 37.4), the myopic episodic search (36.8), the oracle who knows the goal (40.3) and
random moves. A short training run stays far below the Bayes-optimal return: the point is the
yardstick, not the agent.

Run (torch and the lvrnn package with its gym extra installed):
    python examples/python/gridworld_torch_lstm.py --seconds 120
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

import lvrnn
import lvrnn.envs  # noqa: F401  (registers lvrnn/GridWorld-v0)

SIZE, STEPS, ACTIONS = 5, 100, 4
D_IN = 2 * SIZE + ACTIONS + 2  # position, previous action, previous reward, inner episode ended


class Agent(nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.lstm = nn.LSTM(D_IN, hidden, batch_first=True)
        self.policy = nn.Linear(hidden, ACTIONS)
        self.value = nn.Linear(hidden, 1)


def play(agent: Agent, env, seed=None):
    """One task per sub-environment (STEPS interactions, no gradients). Returns the LSTM inputs
    (B, STEPS, D_IN), the actions and rewards (B, STEPS), and each task's return (B,)."""
    obs, _ = env.reset(seed=seed)
    b = env.num_envs
    inputs = torch.zeros(b, STEPS, D_IN)
    actions = torch.zeros(b, STEPS, dtype=torch.long)
    rewards = torch.zeros(b, STEPS)
    prev = torch.zeros(b, ACTIONS + 2)
    carry = None
    with torch.no_grad():
        for t in range(STEPS):
            x = torch.cat([torch.as_tensor(obs), prev], -1)
            inputs[:, t] = x
            out, carry = agent.lstm(x[:, None], carry)
            a = torch.distributions.Categorical(logits=agent.policy(out[:, 0])).sample()
            obs, r, _, truncated, info = env.step(a.numpy())
            r = torch.as_tensor(r, dtype=torch.float32)
            actions[:, t], rewards[:, t] = a, r
            done = torch.as_tensor(info["inner_done"], dtype=torch.float32)
            prev = torch.cat([nn.functional.one_hot(a, ACTIONS).float(), r[:, None], done[:, None]], -1)
    assert truncated.all(), "a task is STEPS interactions"
    return inputs, actions, rewards, torch.as_tensor(info["return"], dtype=torch.float32)


def train(agent: Agent, seconds: float, batch: int = 64, gamma: float = 0.95, lr: float = 3e-3, seed: int = 0):
    """A2C on fresh tasks (seed + 1) each update until `seconds` have passed."""
    env = gym.make_vec("lvrnn/GridWorld-v0", num_envs=batch)
    env.reset(seed=seed + 1)
    opt = torch.optim.Adam(agent.parameters(), lr=lr)
    discount = gamma ** torch.arange(STEPS, dtype=torch.float32)
    start, last_print, update, recent = time.time(), 0.0, 0, []
    while time.time() - start < seconds:
        inputs, actions, rewards, returns = play(agent, env)
        g = torch.flip(torch.cumsum(torch.flip(rewards * discount, [1]), 1), [1]) / discount
        out, _ = agent.lstm(inputs)
        logp = torch.log_softmax(agent.policy(out), -1)
        value = agent.value(out).squeeze(-1)
        adv = (g - value).detach()
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        progress = min((time.time() - start) / seconds, 1.0)
        entropy = -(logp.exp() * logp).sum(-1).mean()
        loss = (
            -(logp.gather(-1, actions[..., None])[..., 0] * adv).mean()
            + 0.5 * ((g - value) ** 2).mean()
            - 0.02 * (1 - progress) * entropy
        )
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(agent.parameters(), 1.0)
        opt.step()
        update += 1
        recent = (recent + [returns.mean().item()])[-20:]
        elapsed = time.time() - start
        if elapsed - last_print >= 10 or elapsed >= seconds:
            last_print = elapsed
            print(f"  update {update:4d} ({elapsed:5.1f} s): training return {np.mean(recent):5.2f} (last 20 updates)")
    return update


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="training time (wall clock)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lvrnn.set_threads(1)
    torch.manual_seed(args.seed)
    agent = Agent()
    print(f"training a {agent.lstm.hidden_size}-unit torch LSTM agent (A2C, 64 tasks per update, "
          f"lvrnn/GridWorld-v0) for {args.seconds:.0f} s")
    updates = train(agent, args.seconds, seed=args.seed)

    tasks = 256
    test_env = gym.make_vec("lvrnn/GridWorld-v0", num_envs=tasks)
    _, _, _, returns = play(agent, test_env, seed=args.seed)
    refs = lvrnn.references("gridworld", tasks, seed=args.seed)  # the same 256 tasks
    ci = lambda v: 2.576 * v.std(ddof=1) / np.sqrt(len(v))  # noqa: E731  (99% interval)
    print(f"after {updates} updates, return over {STEPS} interactions on {tasks} test tasks "
          f"(seed {args.seed}; mean ± 99% CI):")
    print(f"  {'torch LSTM agent':<16} {returns.mean().item():6.2f} ± {ci(returns.numpy()):.2f}")
    for run in refs:
        print(f"  {run.policy:<16} {run.returns.mean():6.2f} ± {ci(run.returns):.2f}")
    print("  (Bayes-optimal over all 600 (start, goal) pairs, exactly: 22421/600 = 37.37)")


if __name__ == "__main__":
    main()
