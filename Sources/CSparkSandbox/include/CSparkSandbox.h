#ifndef CSPARKSANDBOX_H
#define CSPARKSANDBOX_H

/// Makes this process the reaper of its orphaned descendants (prctl PR_SET_CHILD_SUBREAPER), so
/// that a sandbox's processes that outlive their parent are reparented here and can be reaped,
/// not left as zombies under an init that never reaps. 0 on success, -1 with errno otherwise.
int spark_become_child_subreaper(void);

#endif
