from fltui.cli import main

raise SystemExit(main())
