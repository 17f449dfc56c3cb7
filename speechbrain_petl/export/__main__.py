"""``python -m speechbrain_petl.export`` (see :mod:`speechbrain_petl.export.cli`)."""

from speechbrain_petl.export.cli import main

if __name__ == "__main__":
    main()
