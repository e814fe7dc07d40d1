from keygen.cli import main

raise SystemExit(main())
