"""Issue a development JWT: `python scripts/issue_token.py sub=u42 'scopes=[recs:read:any]'`.

Thin entry over `recsys token` (same key as `recsys serve`)."""

import sys

from recsys.cli import main

if __name__ == "__main__":
    main(["token", *sys.argv[1:]])
