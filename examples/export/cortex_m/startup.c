/* Reset for a bare-metal Cortex-M4F under qemu-system-arm -M mps2-an386 -semihosting: turn on the
 * FPU (the exported code and the harness use it), then newlib's semihosting start-up (_start from
 * rdimon-crt0: .bss, argv from the semihosted command line, main, exit). A fault prints its name
 * through semihosting and exits instead of hanging. */
#include <stdint.h>

extern void _start(void);
extern uint32_t __stack_top;

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
