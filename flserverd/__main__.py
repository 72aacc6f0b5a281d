from flserverd.cli import main

raise SystemExit(main())
