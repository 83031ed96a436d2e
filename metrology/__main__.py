from metrology.cli import main

raise SystemExit(main())
