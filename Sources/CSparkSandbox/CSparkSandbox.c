#include "CSparkSandbox.h"

#ifdef __linux__
#include <sys/prctl.h>

int spark_become_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}
#else
int spark_become_child_subreaper(void) {
    return -1;
}
#endif
