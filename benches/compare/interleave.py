"""Times one case on the engine and its peers in alternating rounds; benches/compare/run.sh calls it.

    interleave.py <case> <threads> <rounds> <reps> <engine binary> <peer>...

A peer `engine=<path>` is another build of the engine's compare binary: an A/B of two builds of
the engine under the same paired rounds (`speedup` = the other build's time / this one's).
The peer `ours_f32` is the engine's f32 product of the same size (`sgemm<n>` for
`f16_matmul<n>`): what a half-precision product gains over our own f32.
The peer `peak` is the case's flops as register-only FMAs on the same threads (main.rs's
`peak:<case>`): instead of a RESULT line it adds one line with each side's fraction of it,

    PEAK case=.. threads=.. peak_ms=<median of rounds> ours=<median over rounds of peak/ours> <peer>=..

Each side is one process, warmed up once (`--serve` in main.rs and peers.py) and kept for the
whole case; a round asks every side in turn for the median of <reps> calls, after 50 ms of
untimed calls (after a pause, jax took ~5 calls to get back to speed). Rounds are a few
seconds apart at most, so when this machine drifts (its memory and its vCPUs change speed from
minute to minute) every side sees the same states, and each round pairs the engine with each
peer under the same conditions. Prints per peer:

    RESULT case=.. threads=.. ours_ms=<median of rounds> peer=.. peer_ms=<median of rounds>
           speedup=<peer_ms/ours_ms> paired=<median over rounds of peer/ours> won=<rounds>/<all>

1-thread cases pin every side to CPU 0. The numpy side runs with OpenBLAS's own core detection
(OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset).
"""
import os
import subprocess
import sys
import time

# Idle pools spin before they sleep (OpenBLAS for up to ~0.1 s): a pause after each side
# keeps its spinning out of the next side's time.
SETTLE_S = 0.15


class Side:
    def __init__(self, name, argv, env):
        self.name = name
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.rounds = []
        self.expect("ready")  # one at a time: no side warms up while another is timed

    def expect(self, prefix):
        line = self.proc.stdout.readline()
        if not line.startswith(prefix):
            self.proc.kill()
            raise SystemExit(f"{self.name}: expected {prefix!r}, got {line!r} (exit {self.proc.wait()})")
        return line[len(prefix) :].strip()

    def round(self, reps):
        self.proc.stdin.write(f"{reps}\n")
        self.proc.stdin.flush()
        self.rounds.append(float(self.expect("ms=")))

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return (xs[(n - 1) // 2] + xs[n // 2]) / 2


def main():
    case, threads, rounds, reps, engine, *peers = sys.argv[1:]
    threads, rounds, reps = int(threads), int(rounds), int(reps)
    pin = ["taskset", "-c", "0"] if threads == 1 else []
    here = os.path.dirname(os.path.abspath(__file__))
    peer_env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    sides = [Side("ours", pin + [engine, "--serve", case, str(threads)], dict(os.environ, RAYON_NUM_THREADS=str(threads)))]
    for p in peers:
        if p.startswith("engine=") or p in ("peak", "ours_f32"):
            if p == "peak":
                binary, what = engine, f"peak:{case}"
            elif p == "ours_f32":
                binary, what = engine, "sgemm" + case[len(case.rstrip("0123456789")) :]
            else:
                binary, what = p[len("engine=") :], case
            argv = pin + [binary, "--serve", what, str(threads)]
            sides.append(Side(p, argv, dict(os.environ, RAYON_NUM_THREADS=str(threads))))
            continue
        argv = pin + [sys.executable, os.path.join(here, "peers.py"), "--serve", p, case, str(threads)]
        sides.append(Side(p, argv, peer_env))
    for r in range(rounds):
        # Rotate who goes first, so no side always follows the same neighbour.
        for s in sides[r % len(sides) :] + sides[: r % len(sides)]:
            time.sleep(SETTLE_S)
            s.round(reps)
    for s in sides:
        s.close()
    ours = sides[0].rounds
    peak = next((s for s in sides if s.name == "peak"), None)
    for s in sides[1:]:
        if s is peak:
            continue
        o, t = median(ours), median(s.rounds)
        paired = median([b / a for a, b in zip(ours, s.rounds)])
        won = sum(a < b for a, b in zip(ours, s.rounds))
        print(
            f"RESULT case={case} threads={threads} ours_ms={o:.4f} peer={s.name} peer_ms={t:.4f} "
            f"speedup={t / o:.2f} paired={paired:.2f} won={won}/{rounds}",
            flush=True,
        )
    if peak:
        share = lambda s: median([p / t for p, t in zip(peak.rounds, s.rounds)])
        parts = " ".join(f"{'ours' if s is sides[0] else s.name}={share(s):.2f}" for s in sides if s is not peak)
        print(f"PEAK case={case} threads={threads} peak_ms={median(peak.rounds):.4f} {parts}", flush=True)


if __name__ == "__main__":
    main()
