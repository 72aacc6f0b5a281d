from flclientd.cli import main

raise SystemExit(main())
