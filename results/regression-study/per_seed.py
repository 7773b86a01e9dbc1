"""Per-seed CE / entropy of the regression study (issue 30), from the sweep folder's run and
eval CSVs: python3 results/regression-study/per_seed.py sweeps/regression-study > results/regression-study/per_seed.csv"""
import csv, glob, os, re, sys

root = sys.argv[1]
out = csv.writer(sys.stdout)
out.writerow(["column", "job", "seed", "model", "points", "ce", "entropy"])
for path in sorted(glob.glob(f"{root}/runs/*/metrics/eval.csv") + glob.glob(f"{root}/evals/*/eval.csv")):
    job = path.split("/")[-3] if "/runs/" in path else path.split("/")[-2]
    seed = int(re.search(r"seed=(\d+)", job).group(1))
    stage = job.split(".")[0]
    for r in csv.DictReader(open(path)):
        out.writerow([stage, job, seed, r["model"], r["points"], r["ce_mean"], r["entropy_mean"]])
