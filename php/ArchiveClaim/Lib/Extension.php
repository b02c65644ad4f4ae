<?php
/**
 * Whether the matomo_archive_claim extension is there and usable in this process, and the one
 * message that says what to do when it is not.
 *
 * Nothing here logs above NOTICE: core:archive exits 1 when anything logged a warning or an
 * error, and a run that archived through Matomo's own statements because we were absent or
 * misconfigured was a good run.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim\Lib;

use Matomo\ArchiveClaim as Native;
use Piwik\Log\LoggerInterface;

final class Extension
{
    public const NAME = 'matomo_archive_claim';

    /** @var array<string, true> messages already logged by this process */
    private static array $said = [];

    public static function loaded(): bool
    {
        return extension_loaded(self::NAME);
    }

    public static function missingMessage(): string
    {
        return 'The matomo_archive_claim PHP extension is not loaded in this PHP (' . PHP_BINARY . '). '
            . 'Archiving works as without the ArchiveClaim plugin: orphaned invalidations wait for '
            . 'archive_failure_recovery_timeout. Load it with extension=matomo_archive_claim.so in php.ini '
            . '(see the README of matomo_archive_claim).';
    }

    /**
     * Loaded and configured from Matomo's [database] section. configure() with unchanged
     * settings keeps the open connection, so calling this before every use is cheap, and a
     * changed config (tests, long-lived processes) is picked up.
     *
     * @param bool $tellIfMissing say once that the extension is missing (the archiving run's
     *             start does; the Model and the archiving children stay silent, or every child
     *             would repeat it)
     */
    public static function ready(LoggerInterface $logger, bool $tellIfMissing = false): bool
    {
        if (!self::loaded()) {
            if ($tellIfMissing) {
                self::once($logger, self::missingMessage());
            }
            return false;
        }
        try {
            Native\configure(\Piwik\Config::getInstance()->database);
            return true;
        } catch (Native\Exception | \ValueError | \TypeError $e) {
            self::once($logger, 'ArchiveClaim: the matomo_archive_claim extension cannot use Matomo\'s [database] settings: '
                . $e->getMessage() . ' (archiving continues with Matomo\'s own claims)');
            return false;
        }
    }

    /** Logs a notice once per process. */
    public static function once(LoggerInterface $logger, string $message): void
    {
        if (!isset(self::$said[$message])) {
            self::$said[$message] = true;
            $logger->notice($message);
        }
    }
}
