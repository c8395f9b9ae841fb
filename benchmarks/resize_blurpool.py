"""Study (issue 22): does blur-pooling the strided convs of the frozen ImageNet Lite0 base cut the resize flip rate?

    python -m benchmarks.resize_blurpool DATA_DIR [test|val]

Every stride-2 convolution of the pretrained base becomes the same convolution at stride 1 followed by a
fixed 3x3 binomial blur at stride 2 (BlurPool, Zhang 2019, "Making Convolutional Networks Shift-Invariant
Again"), without retraining the base. For the plain and the blur-pooled base: pooled embeddings of the
train, val and test images (``mediapipe`` resize), a softmax-regression head (L-BFGS, L2 chosen on val),
and on test the flip rate between the ``mediapipe``, ``gpu`` and ``pillow`` resizes (an image flips
when the three top-1s are not all equal) with the test accuracy. ``val``: for sets without a test split,
the val files alternate between selection (even) and test (odd). Appends to
``benchmarks/results/resize_blurpool.jsonl``. A study: it did not generalise (see
``benchmarks/results/resize_blurpool_20261206.md``), so edgetl does not offer it.
"""
import sys, glob, json, dataclasses
import numpy as np, keras
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from edgetl.models import registry
from edgetl.export import ptq
from edgetl.preprocess import prepare_batch
from scipy.optimize import minimize

data = sys.argv[1]
spec = registry.get_spec("efficientnet_lite0")
base = registry.build("efficientnet_lite0")

def blurpool(model):
    k1 = np.array([1, 2, 1], np.float32); k2 = np.outer(k1, k1); k2 /= k2.sum()
    def rewrite(layer, args):
        kind = type(layer).__name__
        if kind in ("Conv2D", "DepthwiseConv2D") and tuple(layer.strides) == (2, 2):
            cfg = layer.get_config(); cfg["strides"] = (1, 1); cfg["padding"] = "same"
            new = type(layer).from_config(cfg); new.build(layer.input.shape); new.set_weights(layer.get_weights())
            y = new(args[0])
            c = int(y.shape[-1])
            blur = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name=layer.name + "_blur")
            blur.build(y.shape); blur.set_weights([np.tile(k2[:, :, None, None], (1, 1, c, 1))])
            return blur(y)
        return None
    return ptq._replay(model, rewrite)

def feats(m, paths, resize):
    pre = dataclasses.replace(spec.preprocessing, resize=resize)
    fm = keras.Model(m.inputs, keras.layers.GlobalAveragePooling2D()(m.outputs[0]))
    px = prepare_batch(paths, pre).astype(np.float32)
    return fm.predict(px, batch_size=16, verbose=0)

labels = sorted(p.split("/")[-1] for p in glob.glob(f"{data}/train/*"))
def split(name):
    ps = sorted(glob.glob(f"{data}/{name}/*/*"))
    return ps, np.array([labels.index(p.split("/")[-2]) for p in ps])
tr, ytr = split("train"); va, yva = split("val"); te, yte = split(sys.argv[2] if len(sys.argv) > 2 else "test")
if len(sys.argv) > 2 and sys.argv[2] == "val":  # no test split: the val half with odd index is test, even index selects
    idx = np.arange(len(va)); va, yva, te, yte = [va[i] for i in idx[::2]], yva[::2], [va[i] for i in idx[1::2]], yva[1::2]

def fit(X, y, l2):
    C = len(labels); D = X.shape[1]; Y = np.eye(C)[y]
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Xn = (X - mu) / sd
    def f(t):
        W = t[:D*C].reshape(D, C); b = t[D*C:]
        z = Xn @ W + b; z -= z.max(1, keepdims=True); p = np.exp(z); p /= p.sum(1, keepdims=True)
        g = (p - Y) / len(X)
        return -np.mean(np.sum(Y*np.log(p+1e-12), 1)) + l2*np.sum(W**2), np.concatenate([(Xn.T @ g + 2*l2*W).ravel(), g.sum(0)])
    r = minimize(f, np.zeros(D*C + C), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    W = r.x[:D*C].reshape(D, C); b = r.x[D*C:]
    return lambda X: ((X - mu) / sd) @ W + b

for name, m in (("plain", base), ("blurpool", blurpool(base))):
    Ftr = feats(m, tr, "mediapipe"); Fva = feats(m, va, "mediapipe")
    best = None
    for l2 in (1e-4, 1e-3, 1e-2):
        h = fit(Ftr, ytr, l2); acc = np.mean(h(Fva).argmax(1) == yva)
        if best is None or acc > best[0]: best = (acc, l2, h)
    acc_va, l2, h = best
    P = {rz: h(feats(m, te, rz)).argmax(1) for rz in ("mediapipe", "gpu", "pillow")}
    flips = int(np.sum(~((P["mediapipe"] == P["gpu"]) & (P["gpu"] == P["pillow"]))))
    r = {"base": name, "data": data, "l2": l2, "val_acc": round(100*acc_va, 2),
         "test_acc_mediapipe": round(100*float(np.mean(P["mediapipe"] == yte)), 2), "flips": flips, "n": len(te),
         "flip_pct": round(100*flips/len(te), 2)}
    print("RESULT", json.dumps(r), flush=True)
    with open(__import__("pathlib").Path(__file__).resolve().parent / "results" / "resize_blurpool.jsonl", "a") as fh: fh.write(json.dumps(r) + "\n")
