__version__ = "0.1.0"

# TensorFlow versions the op library is known to build and run with. The
# library is compiled against the TensorFlow installed at build time; the
# loader checks that the same version is installed at run time.
MIN_TF_VERSION = "2.16.0"
MAX_TF_VERSION_EXCLUSIVE = "2.23.0"
# Run by CI (.ci/oldest_tf.sh) beside 2.21: the oldest release of the
# supported range (the first TensorFlow with Keras 3).
OLDEST_TESTED_TF = "2.16.2"
