from pixelexp.cli import main

raise SystemExit(main())
