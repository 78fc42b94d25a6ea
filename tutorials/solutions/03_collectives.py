# ruff: noqa: F821
"""Solutions to the exercises of tutorials/03_collectives.ipynb.

Each ``# %% Exercise ID`` section is the answer cell of that exercise, filled in; each
``(mistake)`` section is a wrong answer that the exercise's check must reject, saying why
(tests/test_notebooks.py runs both).
"""

# %% Exercise 3.1: forward, at step s, the row received at step s − 1
def ring_allgather(comm, mine):
    P, r = comm.world_size, comm.rank
    out = np.empty((P, mine.size), dtype=mine.dtype)
    out[r] = mine
    right, left = (r + 1) % P, (r - 1) % P
    for s in range(P - 1):
        outgoing, incoming = out[(r - s) % P], out[(r - s - 1) % P]
        if r % 2 == 0:                  # even ranks send first, odd ranks receive first
            comm.send(outgoing, right)
            comm.recv(incoming, left)
        else:
            comm.recv(incoming, left)
            comm.send(outgoing, right)
    return out

# %% Exercise 3.1 (mistake): sending one's own row at every step
def ring_allgather(comm, mine):
    P, r = comm.world_size, comm.rank
    out = np.empty((P, mine.size), dtype=mine.dtype)
    out[r] = mine
    for s in range(P - 1):
        incoming = out[(r - s - 1) % P]
        if r % 2 == 0:
            comm.send(out[r], (r + 1) % P)
            comm.recv(incoming, (r - 1) % P)
        else:
            comm.recv(incoming, (r - 1) % P)
            comm.send(out[r], (r + 1) % P)
    return out

# %% Exercise 3.2: 2(P − 1)/P · N, and (P − 1) · N for rank 0
ring_bytes_64 = 2 * (64 - 1) / 64 * 400e6
naive_bytes_64 = (64 - 1) * 400e6

# %% Exercise 3.2 (mistake): the large-P limit
ring_bytes_64 = 2 * 400e6
naive_bytes_64 = (64 - 1) * 400e6

# %% Exercise 3.3: 2(P − 1) messages of N/P bytes; 2(P − 1)α = 2(P − 1)/P·Nβ at N = Pα/β
def ring_time(P, N, alpha, beta):
    return 2 * (P - 1) * alpha + 2 * (P - 1) / P * N * beta

crossover_bytes = 8 * alpha / beta

# %% Exercise 3.3 (mistake): one latency per phase
def ring_time(P, N, alpha, beta):
    return 2 * alpha + 2 * (P - 1) / P * N * beta

crossover_bytes = 8 * alpha / beta

# %% Exercise 3.4: block 0 always; with two ranks block 1 too (a + b == b + a exactly)
def rank_ordered_blocks(P):
    return [0, 1] if P == 2 else [0]

# %% Exercise 3.4 (mistake): forgetting that two terms commute
def rank_ordered_blocks(P):
    return [0]
