/* Reset for a bare-metal Cortex-M4F under qemu-system-arm -M mps2-an386 -semihosting: turn on the
 * FPU (the exported code and the harness use it), then newlib's semihosting start-up (_start from
 * rdimon-crt0: .bss, argv from the semihosted command line, main, exit). A fault prints its name
 * through semihosting and exits instead of hanging. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>

extern void _start(void);
extern uint32_t __stack_top;
extern char end;        /* the linker script: the first byte after .bss, where the heap begins */
extern char __heap_end; /* the linker script: where the heap ends, below the stack's reserve */

#define CPACR (*(volatile uint32_t *)0xE000ED88u)
#define SYS_WRITE0 0x04
#define SYS_EXIT 0x18

static void semihost(uint32_t op, const void *arg) {
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
}

void Reset_Handler(void) {
    CPACR |= 0xFu << 20; /* CP10 and CP11: full access */
    __asm__ volatile("dsb\n isb" ::: "memory");
    _start();
    for (;;) {
    }
}

/* The heap for malloc, bounded by the board's RAM. newlib's own _sbrk (weak) trusts the limits
 * QEMU's semihosting heap-info call reports, 32 MB for this 4 MB board, whose RAM QEMU mirrors every
 * 4 MB: allocations past it overwrote earlier ones and the program's data without an error. */
void *_sbrk(ptrdiff_t increment) {
    static char *brk = &end;
    size_t used = (size_t)(brk - &end), left = (size_t)(&__heap_end - brk);
    if (increment < 0 ? (size_t)-increment > used : (size_t)increment > left) {
        errno = ENOMEM;
        return (void *)-1;
    }
    char *previous = brk;
    brk += increment;
    return previous;
}

void Fault_Handler(void) {
    semihost(SYS_WRITE0, "fault: the Cortex-M took a fault exception\n");
    semihost(SYS_EXIT, (const void *)0x20024u); /* ADP_Stopped_InternalError */
    for (;;) {
    }
}

__attribute__((section(".isr_vector"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(&__stack_top), Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler, 0, Fault_Handler, Fault_Handler,
};
