/* edgecomp's RP2040 second-stage boot loader (the 256 bytes at the start of flash).
 *
 * The boot ROM copies these 256 bytes to SRAM, checks the CRC32 in the last four (edgecomp's
 * build appends it) and runs them. This sets up execute-in-place with the one read command every
 * SPI NOR flash has, 03h with a 24-bit address, at clk_sys / 4 (31 MHz at 125 MHz: within every
 * part's 03h limit), then enters the image whose vector table follows at 0x10000100. Slower than
 * quad I/O, which is part-specific; the XIP cache hides most of it. Position independent: only
 * PC-relative loads and branches. Written from the RP2040 datasheet (2.8.1 boot sequence, 4.10
 * SSI registers); not yet run on a board.
 */
    .syntax unified
    .cpu cortex-m0plus
    .thumb
    .section .text.ec_boot2, "ax"
    .global ec_boot2_entry
    .type ec_boot2_entry, %function
    .thumb_func
ec_boot2_entry:
    push {lr}
    ldr r3, =0x18000000         /* XIP_SSI base */
    movs r1, #0
    str r1, [r3, #0x08]         /* SSIENR = 0: registers writable */
    movs r1, #4
    str r1, [r3, #0x14]         /* BAUDR = 4: SCK = clk_sys / 4 */
    ldr r1, =0x001F0300         /* CTRLR0: DFS_32 = 31 (32-bit frames), TMOD = 3 (EEPROM read), standard SPI */
    str r1, [r3, #0x00]
    ldr r1, =0x03000218         /* SPI_CTRLR0: XIP_CMD = 03h, INST_L = 8 bit, ADDR_L = 24 bit, all serial */
    ldr r0, =0x180000F4
    str r1, [r0]
    movs r1, #0
    str r1, [r3, #0x04]         /* CTRLR1: one data frame per XIP access */
    movs r1, #1
    str r1, [r3, #0x08]         /* SSIENR = 1 */
    pop {r0}
    cmp r0, #0                  /* LR = 0: entered from the boot ROM, else called to re-enable XIP */
    beq 1f
    bx r0
1:  ldr r0, =0x10000100         /* the image's vector table */
    ldr r1, =0xE000ED08         /* VTOR */
    str r0, [r1]
    ldmia r0!, {r1, r2}         /* initial SP, reset handler */
    msr msp, r1
    bx r2
    .ltorg
