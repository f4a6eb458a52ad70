"""The training command, `python train/run.py [--model sfnet] [--help]`: pscfast/train.py holds its flags and
what it runs (pscfast must be importable: `scripts/bootstrap.sh` installs it editable)."""
from pscfast.train import main

if __name__ == "__main__":
    main()
