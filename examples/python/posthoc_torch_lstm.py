"""The post-hoc Laplace posterior of a PyTorch LSTM agent, with lvrnn.

What it trains: a small PyTorch LSTM agent (nn.LSTM with 48 units -> nn.Linear "features"
layer z (n = 8) -> policy and value heads) on the paper's 5-armed Dirichlet(0.2)-Bernoulli
bandit, ``lvrnn/DirichletBandit-v0``, through its Gymnasium vector environment (64 tasks
stepped together in one Rust call): every task draws arm probabilities p ~ Dirichlet(0.2, ...,
0.2); the agent pulls 50 times and sees, at each pull, the one-hot of its previous action and
the previous reward. It is trained by advantage actor-critic (A2C: REINFORCE on returns-to-go
with a learned value baseline and an entropy bonus) for --seconds of wall time, printing its
regret (sum over the 50 pulls of max p - p[action], from the environment's final info).

What it compares: the trained agent then plays 256 test tasks (the paper's test tasks,
alpha = 0.3, seed --seed), and its regret is printed beside the exact reference policies' on the
very same tasks (``lvrnn.references``: Thompson sampling and the knowledge gradient on the
particle posterior, the oracle, random; what ``lvrnn reference`` prints).

What it shows: the trained agent is then played on 256 new tasks, and lvrnn computes, with no
retraining and no change to the agent, the Laplace posterior over its features
z = features(h) (the features layer's output, before the tanh) along those episodes: q_t = N(mu_t, Lambda_t^-1) with mu_t = z_t and Lambda_t = Lambda_{t-1} + J J^T, J the
Jacobian of z with respect to the LSTM's hidden state (paper Sec. 4; here two Table-2 variants:
Sigma accumulated with window 1, and not accumulated over a window of the last 5 inputs). The
figure (--out) shows, over the 50 pulls, the posterior's differential entropy and the KL between
consecutive posteriors, mean over tasks with a 10-90% band: how much the agent's belief about
the task narrows and moves as it gathers evidence. Typically: with Sigma accumulated the entropy
falls all episode long (every pull adds J J^T to the precision) and the KL stays large (the mean
z_t keeps moving while the precision grows); without accumulation the precision holds only the
last 5 pulls' Jacobians, so the entropy falls over the first pulls, then rises back and levels
off once the agent has settled on an arm and its LSTM state reacts less to the inputs, and the
KL falls.

Run (about a minute on one core; torch, matplotlib and the lvrnn package with its gym extra):
    python examples/python/posthoc_torch_lstm.py --seconds 40 --out posthoc_torch_lstm.png
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import gymnasium as gym  # noqa: E402

import lvrnn  # noqa: E402
import lvrnn.envs  # noqa: E402,F401  (registers lvrnn/DirichletBandit-v0)

ARMS, PULLS, ALPHA, ALPHA_TEST = 5, 50, 0.2, 0.3


class Agent(nn.Module):
    """LSTM -> z = features(h) -> tanh -> policy logits and value."""

    def __init__(self, hidden: int = 48, features: int = 8):
        super().__init__()
        self.lstm = nn.LSTM(ARMS + 1, hidden, batch_first=True)
        self.features = nn.Linear(hidden, features)
        self.policy = nn.Linear(features, ARMS)
        self.value = nn.Linear(features, 1)

    def heads(self, h):
        z = torch.tanh(self.features(h))
        return self.policy(z), self.value(z).squeeze(-1)


def play(agent: Agent, env, seed=None):
    """One task per sub-environment of the vector env (PULLS pulls; no gradients). Returns the
    LSTM inputs (B, PULLS, ARMS + 1) (input t, 0-based: one-hot of action t-1 and reward t-1;
    zeros at t = 0), the actions and rewards (B, PULLS) and each task's regret over the PULLS
    pulls (B,), from the environment's final info."""
    env.reset(seed=seed)  # the next B tasks (or tasks 0..B-1 of `seed`)
    b = env.num_envs
    inputs = torch.zeros(b, PULLS, ARMS + 1)
    actions = torch.zeros(b, PULLS, dtype=torch.long)
    rewards = torch.zeros(b, PULLS)
    carry = None
    x = torch.zeros(b, 1, ARMS + 1)
    with torch.no_grad():
        for t in range(PULLS):
            inputs[:, t] = x[:, 0]
            out, carry = agent.lstm(x, carry)
            logits, _ = agent.heads(out[:, 0])
            a = torch.distributions.Categorical(logits=logits).sample()
            _, r, _, truncated, info = env.step(a.numpy())
            r = torch.as_tensor(r, dtype=torch.float32)
            actions[:, t], rewards[:, t] = a, r
            x = torch.cat([nn.functional.one_hot(a, ARMS).float(), r[:, None]], -1)[:, None]
    assert truncated.all(), "a task is PULLS pulls"
    return inputs, actions, rewards, torch.as_tensor(info["regret"], dtype=torch.float32)


def train(agent: Agent, seconds: float, batch: int = 64, gamma: float = 0.8, lr: float = 1e-2, seed: int = 0):
    """A2C on fresh tasks each update until `seconds` have passed. The episode is played step by
    step without gradients, then the recorded inputs go through the LSTM once with gradients
    (the same policy, so the gradient is on-policy). Training tasks: seed + 1 (the test tasks
    below are those of seed)."""
    env = gym.make_vec("lvrnn/DirichletBandit-v0", num_envs=batch, alpha=ALPHA)
    env.reset(seed=seed + 1)
    opt = torch.optim.Adam(agent.parameters(), lr=lr)
    start, last_print, update, recent = time.time(), 0.0, 0, []
    discount = gamma ** torch.arange(PULLS, dtype=torch.float32)
    while time.time() - start < seconds:
        inputs, actions, rewards, regret = play(agent, env)
        # returns-to-go G_t = sum_{s >= t} gamma^(s-t) r_s
        g = torch.flip(torch.cumsum(torch.flip(rewards * discount, [1]), 1), [1]) / discount
        g = g * (1 - gamma)  # returns in [0, 1], the value head's scale
        out, _ = agent.lstm(inputs)
        logits, value = agent.heads(out)
        logp = torch.log_softmax(logits, -1)
        adv = (g - value).detach()
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        progress = min((time.time() - start) / seconds, 1.0)
        for group in opt.param_groups:  # linear decay to lr / 10: late updates do not undo early ones
            group["lr"] = lr * (1 - 0.9 * progress)
        entropy = -(logp.exp() * logp).sum(-1).mean()
        loss = (
            -(logp.gather(-1, actions[..., None])[..., 0] * adv).mean()
            + 0.5 * ((g - value) ** 2).mean()
            - 0.05 * (1 - progress) * entropy
        )
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(agent.parameters(), 5.0)
        opt.step()
        update += 1
        recent = (recent + [regret.mean().item()])[-20:]
        elapsed = time.time() - start
        if elapsed - last_print >= 5 or elapsed >= seconds:
            last_print = elapsed
            print(f"  update {update:4d} ({elapsed:4.1f} s): training regret {np.mean(recent):5.2f} (last 20 updates)")
    return update


def band(ax, values: np.ndarray, label: str, color, first_t: int):
    """Mean over tasks (rows) with a 10-90% band, against t = first_t, first_t + 1, ..."""
    t = np.arange(first_t, first_t + values.shape[1])
    ax.plot(t, values.mean(0), color=color, label=label)
    lo, hi = np.percentile(values, [10, 90], axis=0)
    ax.fill_between(t, lo, hi, color=color, alpha=0.2, linewidth=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=40.0, help="training time (wall clock)")
    ap.add_argument("--out", default="posthoc_torch_lstm.png", help="figure file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(1)
    lvrnn.set_threads(1)
    torch.manual_seed(args.seed)

    agent = Agent()
    print(f"training a {agent.lstm.hidden_size}-unit torch LSTM agent (A2C, 64 tasks per update, "
          f"lvrnn/DirichletBandit-v0, alpha = {ALPHA}) for {args.seconds:.0f} s")
    updates = train(agent, args.seconds, seed=args.seed)

    # The trained agent on 256 test tasks (alpha = 0.3, seed --seed), beside the exact references
    # on the same tasks: the inputs its LSTM saw are also what lvrnn needs below.
    tasks = 256
    test_env = gym.make_vec("lvrnn/DirichletBandit-v0", num_envs=tasks, alpha=ALPHA_TEST)
    inputs, _, _, regret = play(agent, test_env, seed=args.seed)
    agent_regret = regret.mean().item()
    refs = lvrnn.references("bandit", tasks, seed=args.seed, alpha=ALPHA_TEST)
    ci = lambda v: 2.576 * v.std(ddof=1) / np.sqrt(len(v))  # noqa: E731  (99% interval)
    print(f"after {updates} updates, regret over {PULLS} pulls on {tasks} test tasks (alpha = {ALPHA_TEST}, "
          f"seed {args.seed}; mean ± 99% CI):")
    print(f"  {'torch LSTM agent':<22} {agent_regret:6.2f} ± {ci(regret.numpy()):.2f}")
    for run in refs:
        print(f"  {run.policy:<22} {run.cum_regret.mean():6.2f} ± {ci(run.cum_regret):.2f}")
    random_regret = refs["random"].cum_regret.mean()

    # The post-hoc Laplace posterior over z = features(h): no retraining, the agent's weights as
    # they are. nn.Linear(H, n) stores weight as (n, H); lvrnn takes the (H, n) projection.
    laplace = lvrnn.LaplaceLSTM(
        agent.lstm.state_dict(), projection=agent.features.weight.T, bias=agent.features.bias
    )
    variants = {
        "Σ accumulated, window 1": "laplace:window=1,accumulate=sigma",
        "not accumulated, window 5": "laplace:window=5,accumulate=none",
    }
    posts = {name: laplace.filter(inputs, spec) for name, spec in variants.items()}
    # lvrnn ran the same LSTM: its h equals torch's (float32 over 50 steps: to ~1e-5).
    with torch.no_grad():
        h_torch = agent.lstm(inputs)[0].numpy()
    first = next(iter(posts.values()))
    print(f"lvrnn's h vs torch's: max |difference| {np.abs(first.h[:, 1:] - h_torch).max():.1e}")
    for name, post in posts.items():
        print(f"{name}: entropy {post.entropy[:, 0].mean():.2f} at t=0 -> {post.entropy[:, -1].mean():.2f} "
              f"at t={PULLS}; mean KL per pull {np.nanmean(post.kl[:, 1:]):.3f}")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for (name, post), color in zip(posts.items(), ["C0", "C1"]):
        band(axes[0], post.entropy, name, color, first_t=0)  # t = 0: the prior N(z_0, I)
        band(axes[1], post.kl[:, 1:], name, color, first_t=1)  # KL is undefined (NaN) at t = 0
    axes[0].set(xlabel="step t (the results of t - 1 pulls seen)", ylabel="entropy of q_t (nats)", title="posterior entropy")
    axes[1].set(xlabel="step t (the results of t - 1 pulls seen)", ylabel="KL(q_t || q_t-1) (nats)", title="consecutive KL", yscale="log")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Post-hoc Laplace posterior of a torch LSTM bandit agent (n = {laplace.features}; "
        f"regret {agent_regret:.1f} vs random {random_regret:.1f}); mean over 256 tasks, 10-90% band",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out} ({time.time() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
