"""Study (issue 25): does a classifier trained with int8-like feature noise flip less under int8?

    python -m benchmarks.int8_robust_head RUN_DIR EXPORT_DIR TRAIN_FOLDER [TEST_FOLDER]

On one feature-extraction run and its exported ``*_int8.tflite``: the pooled features of the train and test
images from the Keras model and from the int8 file (:mod:`benchmarks.int8_noise`), then softmax-regression
heads refitted offline (L-BFGS, the run's L2 0.015, clean view only) on the float train features alone,
with views carrying the int8 error of *other* train images (shuffled rows of ``Q - F``), with the int8
features themselves, and with Gaussian noise of the int8 error's per-feature spread. Each head: float
test accuracy, int8 test accuracy, and top-1 agreement between the two. A study, not a product
feature: the head refit here differs from edgetl's (no augmented views, no early stopping).
Appends one JSON line per head to ``benchmarks/results/int8_robust_head_<run>.jsonl``.
"""
import json
import sys
from pathlib import Path

import keras
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.int8_noise import _int8_features, _images
from edgetl.preprocess import prepare_batch
from edgetl.run import load_run
from scipy.optimize import minimize
run_dir = Path(sys.argv[1]); exp = Path(sys.argv[2]); train_dir = Path(sys.argv[3])
run = load_run(run_dir); labels = list(run.labels)
model = keras.models.load_model(run_dir / "model.keras", compile=False)
dense = [l for l in model.layers if type(l).__name__ == "Dense"][-1]
fm = keras.Model(model.inputs, dense.input)
tfl = sorted(exp.glob("*_int8.tflite"))[0]
def feats(folder):
    paths = _images(folder, labels)
    y = np.array([labels.index(Path(p).parent.name) for p in paths])
    px = prepare_batch(paths, run.preprocessing)
    F = fm.predict(px.astype(np.float32), verbose=0).reshape(len(px), -1)
    Q, _ = _int8_features(tfl, px)
    return F, Q, y
test_dir = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(__file__).resolve().parents[2] / "shared/datasets/sign_digits/test"
cache = Path(f"/tmp/int8_robust_head_feats_{run_dir.name}.npz")
if cache.exists():
    d = np.load(cache); Ftr, Qtr, ytr, Fte, Qte, yte = (d[k] for k in ("Ftr","Qtr","ytr","Fte","Qte","yte"))
else:
    Ftr, Qtr, ytr = feats(train_dir); Fte, Qte, yte = feats(test_dir)
    np.savez(cache, Ftr=Ftr, Qtr=Qtr, ytr=ytr, Fte=Fte, Qte=Qte, yte=yte)
C = len(labels); D = Ftr.shape[1]
def fit(X, y, l2=0.015):
    Y = np.eye(C)[y]
    def f(theta):
        W = theta[:D*C].reshape(D, C); b = theta[D*C:]
        z = X @ W + b; z -= z.max(1, keepdims=True); p = np.exp(z); p /= p.sum(1, keepdims=True)
        loss = -np.mean(np.sum(Y * np.log(p + 1e-12), 1)) + l2 * np.sum(W**2)
        g = (p - Y) / len(X); gW = X.T @ g + 2 * l2 * W; gb = g.sum(0)
        return loss, np.concatenate([gW.ravel(), gb])
    r = minimize(f, np.zeros(D*C + C), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return r.x[:D*C].reshape(D, C), r.x[D*C:]
def report(name, W, b):
    zf, zq = Fte @ W + b, Qte @ W + b
    acc = 100*np.mean(zf.argmax(1) == yte); acc_q = 100*np.mean(zq.argmax(1) == yte)
    agr = 100*np.mean(zf.argmax(1) == zq.argmax(1))
    print(f"{name:40s} float acc {acc:.2f}  int8 acc {acc_q:.2f}  agreement {agr:.2f}", flush=True)
    out = Path(__file__).resolve().parent / "results" / f"int8_robust_head_{run_dir.name}.jsonl"
    with open(out, "a") as fh:
        fh.write(json.dumps({"run": str(run_dir), "head": name, "float_acc": round(acc, 2), "int8_acc": round(acc_q, 2),
                             "agreement": round(agr, 2), "test_images": int(len(yte)), "train_images": int(len(ytr))}) + "\n")
W0, b0 = dense.get_weights(); report("edgetl head (as trained)", W0, b0)
W, b = fit(Ftr, ytr); report("refit plain L2 0.015 (clean view)", W, b)
E = Qtr - Ftr
rng = np.random.default_rng(0)
for k in (1, 2, 4):
    Xs = [Ftr] + [Ftr + E[rng.permutation(len(E))] * 1.0 for _ in range(k)]
    W, b = fit(np.concatenate(Xs), np.tile(ytr, k + 1)); report(f"+ {k} views of int8-error noise", W, b)
W, b = fit(np.concatenate([Ftr, Qtr]), np.tile(ytr, 2)); report("float + int8 features", W, b)
sd = E.std(0)
for s in (1.0, 2.0):
    Xs = [Ftr] + [Ftr + rng.normal(size=Ftr.shape) * sd * s for _ in range(4)]
    W, b = fit(np.concatenate(Xs), np.tile(ytr, 5)); report(f"+ 4 views gaussian per-feature sd x{s}", W, b)
