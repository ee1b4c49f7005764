"""Serving client of the segmentation example: labels raw points with the
SavedModel that `segmentation.py` exported, in a process of its own.

    python python/examples/segmentation_client.py MODEL_DIR POINTS.npz
        [--labels-out LABELS.npy]

POINTS.npz holds `points` (float64 [N, 3], any frame) and `attributes`
(float32 [N, C], as the model was trained with). Prints the label counts.
`import sparse_ops` registers the library's ops; nothing else of the
training program is needed. (TF Serving needs the ops linked in: README,
"Export and serving".)
"""

import argparse
import json
import pathlib

import numpy as np
import tensorflow as tf

import sparse_ops  # noqa: F401  (registers the SparseOps> kernels)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir")
    p.add_argument("points", help=".npz with points [N, 3] and attributes [N, C]")
    p.add_argument("--labels-out", default=None, help="write the labels here (.npy)")
    args = p.parse_args(argv)
    serve = tf.saved_model.load(args.model_dir).signatures["serving_default"]
    classes = json.loads((pathlib.Path(args.model_dir) / "classes.json").read_text())
    with np.load(args.points) as data:
        outputs = serve(points=tf.constant(data["points"], tf.float64),
                        attributes=tf.constant(data["attributes"], tf.float32))
    labels = outputs["labels"].numpy()
    counts = np.bincount(labels, minlength=len(classes))
    print(f"labelled {len(labels)} points: " +
          ", ".join(f"{name} {n}" for name, n in zip(classes, counts)))
    if args.labels_out:
        np.save(args.labels_out, labels)
    return labels


if __name__ == "__main__":
    main()
