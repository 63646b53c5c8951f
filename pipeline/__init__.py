"""playbook: experiment-tracked hyperparameter optimization for image classifiers."""

__version__ = "0.1.0"
