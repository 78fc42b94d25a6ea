# ruff: noqa: F821
"""Solutions to the exercises of tutorials/08_fault_tolerance.ipynb.

Each ``# %% Exercise ID`` section is the answer cell of that exercise, filled in; each
``(mistake)`` section is a wrong answer that the exercise's check must reject, saying why
(tests/test_notebooks.py runs both).
"""

# %% Exercise 8.1: the weights, and every optimizer state array and step count
def save_full(path, model, optimizer, step):
    arrays = {f"model__{k}": v for k, v in model.state_dict().items()}
    for i, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            arrays[f"optimizer__{i}__{name}"] = np.asarray(value)
    atomic_savez(path, step=np.array(step), **arrays)

def load_full(path, model, optimizer):
    with np.load(path) as f:
        model.load_state_dict({k[len("model__"):]: f[k] for k in f.files if k.startswith("model__")})
        state = {}
        for k in f.files:
            if k.startswith("optimizer__"):
                _, i, name = k.split("__")
                state.setdefault(int(i), {})[name] = int(f[k]) if name == "step" else f[k].copy()
        saved = optimizer.state_dict()
        saved["state"] = state
        optimizer.load_state_dict(saved)
        return int(f["step"])

# %% Exercise 8.1 (mistake): the moments without the step counts
def save_full(path, model, optimizer, step):
    arrays = {f"model__{k}": v for k, v in model.state_dict().items()}
    for i, state in optimizer.state_dict()["state"].items():
        arrays[f"optimizer__{i}__exp_avg"] = state["exp_avg"]
        arrays[f"optimizer__{i}__exp_avg_sq"] = state["exp_avg_sq"]
    atomic_savez(path, step=np.array(step), **arrays)

def load_full(path, model, optimizer):
    with np.load(path) as f:
        model.load_state_dict({k[len("model__"):]: f[k] for k in f.files if k.startswith("model__")})
        for i, state in enumerate(optimizer.state):
            state["exp_avg"] = f[f"optimizer__{i}__exp_avg"].copy()
            state["exp_avg_sq"] = f[f"optimizer__{i}__exp_avg_sq"].copy()
        return int(f["step"])

# %% Exercise 8.2: 54 days of 24 hours over the 419 unexpected interruptions
hours_between_failures = 54 * 24 / (466 - 47)

# %% Exercise 8.2 (mistake): counting the planned ones too
hours_between_failures = 54 * 24 / 466

# %% Exercise 8.3: τ* = √(2δM)
best_interval_s = math.sqrt(2 * 60 * 3.09 * 3600)

# %% Exercise 8.3 (mistake): without the 2
best_interval_s = math.sqrt(60 * 3.09 * 3600)

# %% Exercise 8.4: back to the last multiple of C at or before S
def lost_steps(S, C):
    return S - C * (S // C)

# %% Exercise 8.4 (mistake): the steps to the NEXT checkpoint
def lost_steps(S, C):
    return C - S % C
