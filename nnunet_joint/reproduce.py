"""``nnunet_joint_reproduce``'s entry point; the study itself is the package :mod:`nnunet_joint.study`
(its command line: :mod:`nnunet_joint.study.cli`)."""

from nnunet_joint.study.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
