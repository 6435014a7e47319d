/* replay.h - `ldmgen replay ID|IMAGE.png`: regenerate a recorded image and report
 * whether the new PNG is byte-identical. */
#ifndef LDM_REPLAY_H
#define LDM_REPLAY_H

/* argv[0] is "replay".  Exit status 0 identical, 1 different or error, 2 usage error,
 * 130 interrupted. */
int cli_replay(int argc, char **argv, const volatile int *interrupt);

#endif
