import sys

from gvae_dist.bench import main

sys.exit(main())
