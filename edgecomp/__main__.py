from edgecomp.cli import main

raise SystemExit(main())
